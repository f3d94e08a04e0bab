"""One MLflow run per pipeline run, opened and closed the same way by every flow, and what each step records in it:
its duration or its failure, its working folder, the choice an Auto* component made."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from prefect.runtime import flow_run

from tasks.core import ComponentBase
from tasks.services import cache, tracking
from tasks.settings import state_dir


class PipelineRun(NamedTuple):
    run_id: str  # the MLflow run
    flow_run_id: str  # the Prefect flow run ("local" outside one)
    title: str  # for people: pipeline, flow run and MLflow run


@contextmanager
def mlflow_run(experiment: str, pipeline: str, tags: dict[str, str], params: dict[str, Any],
               config_json: str) -> Iterator[PipelineRun]:
    """The MLflow run of this flow run, for the block: a tracking server that is down fails it in seconds, before
    anything is created; the run is tagged with the Prefect flow run, the pipeline and the code, records the
    resolved config and the environment (credentials masked), and ends FINISHED, or FAILED when the block raises."""
    tracking.require_server()
    flow_run_id, flow_run_name = str(flow_run.get_id() or "local"), flow_run.get_name() or "local"
    run_id = tracking.start_run(
        experiment, run_name=f"{pipeline}-{flow_run_name}",
        tags={"prefect_flow_run_id": flow_run_id, "pipeline": pipeline, "code_version": cache.code_version(),
              **cache.git_revision(), **tags},
        params=params)
    tracking.log_text(run_id, config_json, "config/pipeline.json")
    tracking.log_text(run_id, tracking.environment_record(), "config/environment.txt")
    try:
        yield PipelineRun(run_id, flow_run_id, f"{pipeline}: {flow_run_name} (MLflow run {run_id})")
    except BaseException:
        tracking.end_run(run_id, "FAILED")
        raise
    tracking.end_run(run_id, "FINISHED")


@contextmanager
def timed(run_id: str, step: str) -> Iterator[None]:
    """Time a step into MLflow; a step that fails leaves its name and error on the run (``failed_step``)."""
    start = time.monotonic()
    try:
        yield
    except BaseException as e:
        for key, value in (("failed_step", step), ("error", f"{type(e).__name__}: {e}"[:1000])):
            tracking.set_tag(run_id, key, value)  # masked
        raise
    tracking.log_metrics(run_id, {f"duration_{step}_s": time.monotonic() - start})


def workdir(run_id: str) -> Path:
    """The run's own working folder on this machine (``$FINEFLOW_HOME/runs/<run id>``)."""
    path = state_dir() / "runs" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def record_choice(run_id: str, component: ComponentBase, chooser: str, prefix: str,
                  log: Callable[[str], None]) -> None:
    """What ``chooser`` (AutoFinetune, AutoDeploy) chose and why (the component's ``auto_plan``), as params
    ``<prefix>.*`` and tag ``<prefix>_reason``; nothing when the config named the component itself."""
    if plan := component.plan_record():
        tracking.log_params(run_id, {f"{prefix}.{k}": v for k, v in plan.items() if k != "reason"})
        tracking.set_tag(run_id, f"{prefix}_reason", plan["reason"][:5000])
        log(f"{chooser}: {plan['reason']}")


def record_smoke(run_id: str, started, log: Callable[..., None]) -> None:
    """A started endpoint's smoke test: its answer as the run's tag ``smoke_answer``, and in the log."""
    tracking.set_tag(run_id, "smoke_answer", str(started.answer)[:250])
    log("endpoint %s serving at %s; smoke test: %s", started.endpoint.name, started.endpoint.url, started.shown)
