"""The MLflow model registry: one version per deployed endpoint, the ``production`` alias as the gate's output."""

from __future__ import annotations

from mlflow.exceptions import MlflowException

from tasks.masking import redact
from tasks.tracking import client


def ensure_model(name: str) -> None:
    c = client()
    try:
        c.get_registered_model(name)
    except MlflowException:
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
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(client().get_model_version(name, version).tags)


def set_tag(name: str, version: str, key: str, value: str) -> None:
    client().set_model_version_tag(name, version, key, redact({key: value})[key])


def move_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def unless_superseded(name: str, seen: str | None, gate, candidate: dict[str, float]):
    """A promotion guard (``rollout.promote``): if the alias moved from ``seen`` while the run ran (another run of
    the pipeline promoted), the candidate replaces that version only by beating its recorded gate metric by more
    than the gate's ``min_improvement``, as it had to beat the base."""
    from tasks.evaluate import beats

    def guard(current: str | None) -> str | None:
        if current is None or current == seen:
            return None
        metric, ours = gate.metric, round(candidate[gate.metric], 4)  # as the tags record it
        theirs = version_tags(name, current).get(f"candidate_{metric}")
        if theirs is not None and not beats(metric, ours, float(theirs), gate.min_improvement):
            return (f"production moved to version {current} while this run ran (from {seen or 'none'}), and this "
                    f"candidate's {metric} {ours:.4f} does not beat its {float(theirs):.4f}")
        return None
    return guard
