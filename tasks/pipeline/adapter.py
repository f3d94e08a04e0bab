"""The deploy step of ``deploy.serve: adapter``: the candidate's LoRA adapter, not its merged model, is what the
version is and what serves (``tasks.serving.adapters``: one shared endpoint per base, many adapters on it).

    deploy: {backend: relay, serve: adapter, max_adapters: 8}

The adapter folder (PEFT's files and ``fineflow_base.json``: the base model, where it is, its revision) is kept
under the adapter root and logged as the run's MLflow model ``adapter``; the version registered names it. The
evaluation is the merged model's (the same weights: base + adapter).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks.data import PreparedDataset, read_jsonl
from tasks.files import slug
from tasks.formatter import make_formatter
from tasks.models import ModelRef
from tasks.models.local import revision_of
from tasks.pipeline.config import DeploySection
from tasks.pipeline.run import record_smoke, timed, workdir
from tasks.pipeline.steps import TrainResult
from tasks.servers.adapters import BASE_RECORD
from tasks.services import cache, mlflow_model, tracking
from tasks.serving import adapters
from tasks.serving.adapter_endpoints import root
from tasks.serving.endpoints import Endpoint

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


class AdapterModel(BaseModel):
    path: str  # the adapter folder on this machine, under the adapter root
    s3_uri: str  # the same files in the bucket (inside the MLflow model)
    model_uri: str  # the MLflow logged model (models:/m-...): what the registered version's source names
    base_model: str
    base_revision: str

    def version_tags(self, ep: Endpoint) -> dict[str, str]:
        return {"serve": "adapter", "adapter_name": ep.adapter or "", "base_model": self.base_model,
                "base_model_revision": self.base_revision}


@task
def keep_adapter(trained: TrainResult, base: ModelRef, key: str, run_id: str) -> AdapterModel:
    """The candidate's adapter (``key``) kept under the adapter root with its base record, and logged to MLflow
    once (an unchanged re-run takes the logged one)."""
    if hit := cache.get("adapter", key):
        folder = Path(hit["path"])
        if (folder / BASE_RECORD).exists():
            tracking.set_tag(run_id, "cache_hit.adapter", "true")
            return AdapterModel(**hit)
    source = Path(trained.target_path)
    found = [f for f in ADAPTER_FILES if (source / f).is_file()]
    if "adapter_config.json" not in found or len(found) < 2:
        raise ValueError(f"deploy.serve: adapter: finetune.framework {trained.framework} left no LoRA adapter in "
                         f"{source} (adapter_config.json and its weights); serve: merged serves its model")
    folder = root() / "files" / slug(base.name) / key[:24]
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in found:
        shutil.copy2(source / name, staging / name)
    revision = revision_of(base.path)
    (staging / BASE_RECORD).write_text(json.dumps({"base_model": base.name, "base_model_path": base.path,
                                                   "base_model_revision": revision}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)  # whole or not there
    with timed(run_id, "log_adapter"):
        logged = mlflow_model.log_adapter(run_id, folder, workdir(run_id) / "adapter", log=get_run_logger().info)
    model = AdapterModel(path=str(folder), s3_uri=logged.files_uri, model_uri=logged.uri, base_model=base.name,
                         base_revision=revision)
    cache.put("adapter", key, model.model_dump(mode="json"))
    return model


@task
def deploy_adapter(cfg: DeploySection, adapter: AdapterModel, name: str, trained: TrainResult,
                   data: PreparedDataset, run_id: str) -> Endpoint:
    """Load the adapter on its base's shared endpoint (started the first time) as ``NAME-<run>``, and smoke-test it
    there with a validation record, as ``deploy`` does a merged model's own endpoint."""
    logger = get_run_logger()
    with timed(run_id, "deploy"):
        started = adapters.serve(cfg.relaunch(trained.prompt_style), adapter.path, f"{name}-{run_id[:8]}",
                                 smoke_records=read_jsonl(data.val_path)[:8],
                                 formatter=make_formatter(cfg.formatter, cfg.formatter_selector), log=logger.info,
                                 adapter_uri=adapter.s3_uri)
    record_smoke(run_id, started, logger.info)
    return started.endpoint
