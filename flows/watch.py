"""The ``watch`` flow: new data in a pipeline's data home starts a finetune run of that pipeline.

    prefect deployment run watch/data                  # make deploy schedules it every minute
    python -m infra.demo push-data FILE PIPELINE       # put a dataset file in s3://<bucket>/incoming/PIPELINE/

For each pipeline in ``deployments/`` it compares the newest file in its data home (sha256 of the bytes)
with the file the pipeline's ``production`` version was trained on; when they differ it emits
``fineflow.dataset.updated`` (resource ``fineflow.pipeline.<name>``, payload ``uri`` and ``sha256``), which the
pipeline's deployment trigger in ``prefect.yaml`` turns into a run on that file. A file is announced once: the
last hash announced per pipeline is kept in the Prefect variable ``fineflow-watch-<name>``. It also ends FAILED
the MLflow runs of flow runs that crashed (their process died with their worker), and decides the candidates a
canary held for too few live requests (``status=pending``: ``tasks.pipeline.pending``).
"""

from __future__ import annotations

import re
import sys

from prefect import flow, get_run_logger, task
from prefect.events import emit_event
from prefect.variables import Variable

from tasks.pipeline import incoming, pending
from tasks.pipeline.config import ConfigError, load_config
from tasks.services import tracking
from tasks.settings import REPO_ROOT


def announced_key(pipeline: str) -> str:
    """The Prefect variable holding the last hash announced for ``pipeline`` (names: lowercase, digits, -, _)."""
    return "fineflow-watch-" + re.sub(r"[^a-z0-9_-]", "-", pipeline.lower())


@task(retries=2, retry_delay_seconds=5)
def check_pipeline(config_path: str) -> incoming.DataCheck | None:
    """Whether the pipeline's data home holds data its production version was not trained on, and it has not
    been announced yet; announce it."""
    logger = get_run_logger()
    try:
        config = load_config(config_path)
    except ConfigError as e:
        logger.error("skipping %s: %s", config_path, e)
        return None
    found = incoming.check(config)
    if found.uri is None:
        return found
    if not found.changed:
        logger.info("%s: %s is what production was trained on", config.name, found.uri)
        return found
    if Variable.get(announced_key(config.name)) == found.sha256:
        logger.info("%s: %s (sha256 %s) was announced already", config.name, found.uri, found.sha256[:12])
        return found.model_copy(update={"changed": False})
    emit_event(event=incoming.EVENT, resource={"prefect.resource.id": incoming.resource_id(config.name)},
               payload={"uri": found.uri, "sha256": found.sha256, "config_path": config_path})
    Variable.set(announced_key(config.name), found.sha256, overwrite=True)
    logger.info("%s: new data %s (sha256 %s, production was trained on %s): announced %s", config.name, found.uri,
                found.sha256[:12], (found.production_sha256 or "none")[:12], incoming.EVENT)
    return found


@task
def close_crashed_runs() -> list[str]:
    """MLflow runs of flow runs that died with their worker, still RUNNING there: ended FAILED."""
    closed = tracking.close_crashed_runs()
    if closed:
        get_run_logger().info("ended FAILED the MLflow runs of crashed flow runs: %s", ", ".join(closed))
    return closed


@task(retries=2, retry_delay_seconds=5)
def decide_held_candidates() -> list[str]:
    """Candidates their canary held for too few live requests (``status=pending``), judged again on the copies kept
    since: promoted, rejected, or left waiting."""
    return [f"{r.model_name} version {r.version}: {r.reason}" for r in pending.decide_all(log=get_run_logger().info)]


@flow(name="watch", log_prints=True)
def watch(config_paths: list[str] | None = None) -> list[incoming.DataCheck]:
    """Check every pipeline's data home (or those of ``config_paths``) once; tidy up after crashed runs; decide
    held candidates."""
    close_crashed_runs()
    decide_held_candidates()
    paths = config_paths or sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "deployments").glob("*.yaml"))
    return [found for found in map(check_pipeline, paths) if found is not None]


if __name__ == "__main__":
    for found in watch(sys.argv[1:] or None):
        print(found.model_dump_json())
