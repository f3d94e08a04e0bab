"""The MLflow model registry: one version per deployed endpoint, the ``production`` alias as the gate's output."""

from __future__ import annotations

from mlflow.exceptions import MlflowException

from tasks.masking import redact
from tasks.services.tracking import client


def missing(e: MlflowException) -> bool:
    """Whether MLflow answered that what was asked for does not exist (a model, a version, an alias), as opposed
    to not answering at all (a network error, a 5xx: an error, never "none")."""
    return e.error_code == "RESOURCE_DOES_NOT_EXIST" or \
        (e.error_code == "INVALID_PARAMETER_VALUE" and "not found" in e.message)


def ensure_model(name: str) -> None:
    c = client()
    try:
        c.get_registered_model(name)
    except MlflowException as e:
        if not missing(e):
            raise
        c.create_registered_model(name, description="Created by fineflow: one version per deployed endpoint.")


def create_version(name: str, source: str, run_id: str, tags: dict[str, str]) -> str:
    """A version whose ``source`` is an MLflow logged model (``models:/m-...``, linked to it) or a bucket URI."""
    ensure_model(name)
    model_id = source[len("models:/"):] if source.startswith("models:/m-") else None
    version = client().create_model_version(name, source=source, run_id=run_id, tags=redact(tags), model_id=model_id)
    return str(version.version)


def files_uri(name: str, version: str) -> str:
    """Where the version's checkpoint files are in the bucket (a plain folder every engine serves)."""
    mv = client().get_model_version(name, version)
    return mv.tags.get("model_files") or mv.source


def alias_version(name: str, alias: str) -> str | None:
    """The version ``alias`` points to; None when the model or the alias does not exist. Any other failure
    raises: a run that took "no answer" for "no alias" would lose the version it must beat or roll back to."""
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException as e:
        if missing(e):
            return None
        raise


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(client().get_model_version(name, version).tags)


def set_tag(name: str, version: str, key: str, value: str) -> None:
    client().set_model_version_tag(name, version, key, redact({key: value})[key])


def move_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)
