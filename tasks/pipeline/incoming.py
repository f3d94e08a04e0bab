"""New data for a pipeline: where it lands, how it is told apart from what production was trained on.

A pipeline's data home is ``s3://<bucket>/incoming/<pipeline>/``; the newest dataset file there is its
candidate data. The ``watch`` flow (``flows/watch.py``) compares the file's sha256 with the one recorded on
the version that holds the pipeline's ``production`` alias (tag ``dataset_file_hash``) and, when they differ,
emits ``fineflow.dataset.updated``; each finetune deployment's trigger in ``prefect.yaml`` runs on it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from tasks.data.readers import SUFFIXES
from tasks.pipeline.config import PipelineConfig
from tasks.services import registry, storage
from tasks.settings import Settings

EVENT = "fineflow.dataset.updated"


def resource_id(pipeline: str) -> str:
    """The Prefect event resource of a pipeline (what its deployment's trigger matches)."""
    return f"fineflow.pipeline.{pipeline}"


def home(pipeline: str) -> str:
    return f"s3://{Settings.load().s3_bucket}/incoming/{pipeline}/"


def push(local: str | Path, pipeline: str) -> str:
    """Upload a dataset file to the pipeline's data home; returns its URI."""
    local = Path(local)
    if local.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{local}: a dataset file ends in {', '.join(SUFFIXES)}")
    if not local.is_file():
        raise FileNotFoundError(f"{local}: file not found")
    return storage.upload_file(local, home(pipeline) + local.name)


class DataCheck(BaseModel):
    pipeline: str
    uri: str | None  # the newest file in the data home; None when there is none
    sha256: str | None = None
    production_sha256: str | None = None  # what the production version was trained on
    changed: bool = False


def check(config: PipelineConfig) -> DataCheck:
    """Whether the pipeline's data home holds data other than what its production version was trained on."""
    uri = storage.newest_object(home(config.name), SUFFIXES)
    if uri is None:
        return DataCheck(pipeline=config.name, uri=None)
    digest = storage.object_sha256(uri)
    version = registry.alias_version(config.registry.model_name, config.registry.alias)
    trained_on = registry.version_tags(config.registry.model_name, version).get("dataset_file_hash") \
        if version else None
    return DataCheck(pipeline=config.name, uri=uri, sha256=digest, production_sha256=trained_on,
                     changed=digest != trained_on)
