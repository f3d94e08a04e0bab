"""Deploy-only pipelines (``flows/deploy.py``): a model that is served as it is (OCR, text-to-speech,
speech-to-text, images) goes model -> bucket -> endpoint -> registered version -> alias, with the same endpoint
start, registration and promotion as a finetuned model (``tasks.promote.start_checked``, ``tasks.deploy.rollout``).

A config (``deployments/serve/ocr.yaml``)::

    name: ocr
    model: {name: pp-ocrv6-small, type: ocr}       # a folder, or a weights package's bundled name
    deploy: {backend: ocr}                          # an engine that serves the type (tasks/deploy/__init__.py)
    registry: {model_name: fineflow-ocr}

The smoke test is the gate: a version is registered only for an endpoint that answered it right, and the alias
moves to it only when the endpoint is healthy; otherwise the version is tagged ``status=rejected``, its endpoint
stopped, and production keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from prefect import get_run_logger, task
from pydantic import BaseModel, Field, model_validator

from tasks import registry, storage, tracking
from tasks.config import NAME, DeploySection, RegisterSection, Section, read_config
from tasks.deploy import ENGINES, rollout
from tasks.deploy.endpoints import Endpoint
from tasks.masking import show_argv
from tasks.models.local import revision_of
from tasks.promote import Registration, settle, start_checked
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
    engine = rollout.make_engine(config.deploy, config.model.name, config.registry.model_name, "")
    path = engine.model_folder(None, config.model.name)
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
    """Start the configured engine on the model and smoke-test it (``start_checked``): (endpoint, what it shows)."""
    engine = rollout.make_engine(config.deploy, files.path, config.registry.model_name, "")
    return start_checked(engine, config.deploy, files.path, config.registry.model_name, run_id, [], "")


@task
def register_served(config: ServeConfig, ep: Endpoint, files: ServedFiles, smoke: str, run_id: str,
                    flow_run_id: str) -> Registration:
    """Register the endpoint as a version (type, engine, smoke result); move the alias to it when healthy."""
    name, alias = config.registry.model_name, config.registry.alias
    healthy = ep.healthy()
    tags = {"endpoint_url": ep.url, "model_files": files.uri, "endpoint_name": ep.name, "backend": ep.backend,
            "model_type": config.model.type, "model_revision": files.revision, "smoke_test": smoke[:5000],
            "api_key_file": ep.api_key_file or "none (open, loopback only)", "deploy_config": json.dumps(ep.relaunch),
            "launch_command": show_argv(ep.argv), "health": "ok" if healthy else "failed",
            "prefect_flow_run_id": flow_run_id, "pipeline": config.name}
    version = registry.create_version(name, files.uri, run_id, tags)
    previous, why_not = registry.alias_version(name, alias), None
    if healthy:
        try:
            done = rollout.promote(name, alias, version, ep, host=config.deploy.host, log=get_run_logger().info)
            previous = done.previous_version
        except RuntimeError as e:
            why_not = str(e)
    else:
        why_not = "health check failed"
    promoted = "" if why_not else \
        f"{alias} -> version {version} ({config.model.type} on {ep.backend}), served at {done.url}"
    return settle(name, alias, version, ep, run_id, why_not, previous, promoted)
