"""Deploy-only pipelines (``flows/deploy.py``): a model that is served as it is (OCR, text-to-speech,
speech-to-text, images) goes model -> bucket -> endpoint -> registered version -> alias, with the same endpoint
start (``tasks.serving.start``), registration and promotion (``tasks.pipeline.registration``) as a finetuned model.

A config (``deployments/serve/ocr.yaml``)::

    name: ocr
    model: {name: pp-ocrv6-small, type: ocr}       # a folder, or a weights package's bundled name
    deploy: {backend: ocr}                          # an engine that serves the type (tasks/deploy/engines.py)
    registry: {model_name: fineflow-ocr}

The smoke test is the gate: a version is registered only for an endpoint that answered it right, and the alias
moves to it only when the endpoint is healthy; otherwise the version is tagged ``status=rejected``, its endpoint
stopped, and production keeps serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import get_run_logger, task
from pydantic import BaseModel, Field, model_validator

from tasks.deploy import ENGINES
from tasks.models.local import revision_of
from tasks.pipeline.config import NAME, DeploySection, RegisterSection, Section
from tasks.pipeline.config_files import read_config
from tasks.pipeline.registration import Registration, register
from tasks.pipeline.run import record_smoke, timed
from tasks.services import storage, tracking
from tasks.serving.endpoints import Endpoint
from tasks.serving.start import start_engine
from tasks.settings import Settings


class ServedModel(Section):
    name: str = Field(min_length=1)  # a model folder, or a bundled name (tasks.deploy.media.BUNDLED)
    type: Literal["ocr", "tts", "stt", "sd"]


class ServeConfig(Section):
    name: str = Field(pattern=NAME)
    experiment: str = Field("fineflow-media", min_length=1, max_length=200)
    model: ServedModel
    deploy: DeploySection
    registry: RegisterSection

    @model_validator(mode="after")
    def engine_serves_the_model(self) -> "ServeConfig":
        serves = ENGINES[self.deploy.backend].serves
        if self.model.type not in serves:
            raise ValueError(f"deploy.backend {self.deploy.backend!r} serves {' and '.join(serves)} models; "
                             f"model.type is {self.model.type!r}")
        return self

    def engine(self, model_path: str):
        """The configured engine, serving ``model_path`` under the registered model's name (no prompt style)."""
        return self.deploy.engine(model_path, self.registry.model_name, "")


def load_serve_config(path: str | Path, overrides: dict | None = None) -> ServeConfig:
    return read_config(path, overrides, ServeConfig)


class ServedFiles(BaseModel):
    path: str  # the folder the endpoint serves
    revision: str  # its content hash (sha256:...)
    uri: str  # the same files in the bucket


@task(retries=1, retry_delay_seconds=5)
def stage_model(config: ServeConfig, run_id: str) -> ServedFiles:
    """Find the model's folder (refused at once, naming the model, when it lacks the engine's weights), and keep
    its files in the bucket under their content hash (uploaded once, verified), so the version can be served again
    from the registry on any worker."""
    path = config.engine(config.model.name).model_folder(None, config.model.name)
    revision = revision_of(path)
    uri = f"s3://{Settings.load().s3_bucket}/served-models/{config.registry.model_name}/{revision.split(':')[-1]}"
    try:
        storage.verify_upload(path, uri)
        get_run_logger().info("model files %s are in the bucket already (%s)", path, uri)
    except storage.UploadError:
        get_run_logger().info("uploading model files %s to %s ...", path, uri)
        storage.upload_dir(Path(path), uri)
        storage.verify_upload(path, uri)
    tracking.log_params(run_id, {"model.path": path, "model.revision": revision, "model.files": uri})
    return ServedFiles(path=path, revision=revision, uri=uri)


@task
def serve(config: ServeConfig, files: ServedFiles, run_id: str) -> tuple[Endpoint, str]:
    """Start the configured engine on the model and smoke-test it (``start_engine``): (endpoint, what it shows)."""
    logger = get_run_logger()
    with timed(run_id, "deploy"):
        started = start_engine(config.engine(files.path), files.path, f"{config.registry.model_name}-{run_id[:8]}",
                               api_key=config.deploy.api_key,
                               relaunch=config.deploy.relaunch(""), model_uri=files.uri,
                               smoke_records=[], log=logger.warning)
    record_smoke(run_id, started, logger.info)
    return started.endpoint, started.shown


@task
def register_served(config: ServeConfig, ep: Endpoint, files: ServedFiles, smoke: str, run_id: str,
                    flow_run_id: str) -> Registration:
    """Register the endpoint as a version (type, engine, smoke result); move the alias to it when healthy."""
    tags = {"model_files": files.uri, "model_type": config.model.type, "model_revision": files.revision,
            "smoke_test": smoke[:5000], "prefect_flow_run_id": flow_run_id, "pipeline": config.name}
    return register(config.registry.model_name, config.registry.alias, ep, files.uri, tags, run_id, why_not=None,
                    promoted_as=f"{config.model.type} on {ep.backend}", log=get_run_logger().info)
