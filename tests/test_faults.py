"""Faults on the real stack: the tracking server down at start, two runs of one pipeline at once, a trainer
killed mid-training. Each uses its own model name, so the other stack tests are not disturbed."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from infra import stack as local_stack
from infra.demo import follow, prefect_api, start_deployment
from tasks import registry, tracking
from tasks.deploy import endpoints
from tasks.settings import Settings

pytestmark = pytest.mark.stack
QUICK = {"finetune": {"params": {"max_steps": 30}},
         "evaluate": {"max_samples": 20, "gate": {"metric": "val_loss", "min_improvement": 0.001}}}


def run_and_follow(parameters: dict, out: dict | None = None, key: str = "run"):
    flow_run_id = start_deployment("finetune/quickstart", parameters)
    logs: list[str] = []
    state = follow(flow_run_id, timeout_s=1200, echo=logs.append)
    result = flow_run_id, state, "\n".join(logs)
    if out is not None:
        out[key] = result
    return result


def flow_run_times(flow_run_id) -> float:
    from prefect.client.orchestration import get_client

    with prefect_api(), get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    return (run.end_time - run.start_time).total_seconds()


def test_tracking_server_down_fails_in_seconds_naming_it_and_creating_nothing(stack):
    uri = Settings.load().mlflow_uri
    local_stack.stop("mlflow")
    try:
        flow_run_id, state, logs = run_and_follow({"overrides": {"registry": {"model_name": "fineflow-nomlflow"}}})
    finally:
        local_stack.up("free")  # back on the same port
    assert state.is_failed()
    assert f"the MLflow tracking server at {uri} does not answer" in logs and "`make up`" in logs
    assert flow_run_times(flow_run_id) < 15
    assert tracking.run_for_flow_run(str(flow_run_id)) is None
    assert tracking.client().search_registered_models("name = 'fineflow-nomlflow'") == []


def test_two_runs_at_once_promote_exactly_one(stack):
    """The same pipeline twice at once, same model name: distinct versions and artifacts, one promotion (the
    later one must beat the version that was promoted while it ran, and the same training cannot), one
    production, the other endpoint stopped and its version marked. Runs after the tracking server came back."""
    name = "fineflow-race"
    params = {"overrides": {**QUICK, "registry": {"model_name": name}}}
    results: dict = {}
    threads = [threading.Thread(target=run_and_follow, args=(params, results, k)) for k in "ab"]
    for t in threads:
        t.start()
        time.sleep(1)
    for t in threads:
        t.join()
    states = {k: (v[1], v[2]) for k, v in results.items()}
    assert all(state.is_completed() for state, _ in states.values()), states
    versions = registry.client().search_model_versions(f"name = '{name}'")
    assert len(versions) == 2 and len({v.source for v in versions}) == 2 and len({v.run_id for v in versions}) == 2
    production = registry.alias_version(name, "production")
    rejected = [v for v in versions if v.tags.get("status") == "rejected"]
    assert [v.version for v in rejected] == [str(3 - int(production))]
    (loser,) = rejected
    assert endpoints.get(loser.tags["endpoint_name"]) is None
    winner = registry.version_tags(name, production)
    assert endpoints.get(winner["endpoint_name"]).healthy()
    promoted_logs = [logs for _, logs in states.values() if f"moved alias production -> version {production}" in logs]
    assert len(promoted_logs) == 1
    (other_logs,) = [logs for _, logs in states.values() if logs not in promoted_logs]
    assert f"not promoted: production moved to version {production} while this run ran (from none)" in other_logs
    assert f"{name} version {loser.version}: not promoted" in other_logs


def trainer_of(run_id: str) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "tasks.finetune.train_lora" in cmdline and run_id in cmdline:
            return proc
    return None


def test_a_killed_trainer_fails_the_run_which_keeps_its_log_and_step(stack):
    name = "fineflow-crash"
    flow_run_id = start_deployment("finetune/quickstart", {"overrides": {"registry": {"model_name": name},
                                                                        "finetune": {"params": {"max_steps": 400}}}})
    deadline, mlrun, trainer = time.monotonic() + 600, None, None
    while time.monotonic() < deadline:  # until the loss of step 20 is in MLflow
        mlrun = mlrun or tracking.run_for_flow_run(str(flow_run_id))
        if mlrun and [m for m in tracking.client().get_metric_history(mlrun.info.run_id, "train_loss") if m.step >= 20]:
            trainer = trainer_of(mlrun.info.run_id)
            break
        time.sleep(1)
    assert trainer is not None, "the trainer never reached step 20"
    trainer.kill()  # kill -9
    logs: list[str] = []
    state = follow(flow_run_id, timeout_s=300, echo=logs.append)
    assert state.is_failed() or state.is_crashed()
    run = tracking.client().get_run(mlrun.info.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failed_step"] == "finetune" and "-9" in run.data.tags["error"]
    assert 20 <= int(run.data.tags["last_train_step"]) < 400
    assert "train.log" in [f.path.split("/")[-1] for f in tracking.client().list_artifacts(run.info.run_id, "logs")]
    assert tracking.client().search_registered_models(f"name = '{name}'") == []
