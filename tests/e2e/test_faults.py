"""Faults on the real stack: the tracking server down at start, two runs of one pipeline at once, the worker
killed mid-training (a trainer killed mid-training: tests/e2e/test_resume.py). Each uses its own model name, so the
other stack tests are not disturbed."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from infra import stack as local_stack
from infra.demo import follow, prefect_api, start_deployment
from tasks.services import registry, tracking
from tasks.serving import endpoints
from tasks.settings import Settings
from tests.support.stack import train_log

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
    took = flow_run_times(flow_run_id)
    print(f"tracking server down: the flow run failed {took:.1f}s after it started")
    assert took < 15
    assert tracking.run_for_flow_run(str(flow_run_id)) is None
    assert tracking.client().search_registered_models("name = 'fineflow-nomlflow'") == []


def test_two_runs_at_once_promote_exactly_one(stack):
    """The same pipeline twice at once, same model name: distinct versions and artifacts, one promotion (the
    later one must beat the version that was promoted while it ran, and the same training cannot), one
    production, the other endpoint stopped and its version marked. Runs after the tracking server came back."""
    name = "fineflow-race"
    # force: each run trains its own candidate (unforced, the second would find the first's work and reuse it)
    params = {"overrides": {**QUICK, "registry": {"model_name": name}}, "force": True}
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


def test_a_killed_worker_leaves_a_crashed_run_and_the_next_run_resumes(stack):
    """kill -9 of the worker and everything it started, mid-training: the flow run is marked Crashed once its
    heartbeats stop (the crash automation), its MLflow run ends FAILED, and the next run resumes from the last
    complete checkpoint."""
    from prefect.client.orchestration import get_client

    # max_steps of its own: a candidate no other test trains (an unchanged one would be found done, not trained)
    params = {"overrides": {"registry": {"model_name": "fineflow-workerkill"},
                            "finetune": {"params": {"max_steps": 90, "save_steps": 30}},
                            "evaluate": {"max_samples": 20, "gate": {"metric": "val_loss"}}}}
    flow_run_id = start_deployment("finetune/quickstart", params)
    deadline, mlrun = time.monotonic() + 600, None
    while time.monotonic() < deadline:  # until step 40 is logged: checkpoint-30 is complete by then
        mlrun = mlrun or tracking.run_for_flow_run(str(flow_run_id))
        if mlrun and any(m.step >= 40 for m in tracking.client().get_metric_history(mlrun.info.run_id, "train_loss")):
            break
        time.sleep(0.5)
    assert mlrun and tracking.client().get_run(mlrun.info.run_id).data.tags.get("cache_hit") == "false"
    worker = psutil.Process(int((Settings.load().home / "pids" / "worker.pid").read_text()))
    tree = [worker, *worker.children(recursive=True)]
    assert any("tasks.finetune.train_lora" in " ".join(p.cmdline()) for p in tree), "the trainer is the worker's"
    for proc in tree:
        proc.kill()
    killed_at = time.monotonic()
    try:
        state = None
        with prefect_api(), get_client(sync_client=True) as client:
            while time.monotonic() < killed_at + 240:
                state = client.read_flow_run(flow_run_id).state
                if state.is_final():
                    break
                time.sleep(3)
        assert state.is_crashed(), state
        assert "no heartbeat" in state.message
        crashed_after = time.monotonic() - killed_at
        print(f"worker killed: the flow run was marked Crashed {crashed_after:.0f}s later")
        assert crashed_after < 180, crashed_after  # three missed 30 s beats, then the automation's next pass
    finally:
        local_stack.up("free")  # the worker back
    logs: list[str] = []
    again = start_deployment("finetune/quickstart", params)
    state = follow(again, timeout_s=900, echo=logs.append)
    assert state.is_completed(), logs
    resumed = tracking.run_for_flow_run(str(again)).info.run_id
    assert "checkpoint-30" in next(line for line in train_log(resumed).splitlines() if "resuming from" in line)
    # quickstart logs every 10 steps: the first logged step after checkpoint-30 is 40
    assert min(m.step for m in tracking.client().get_metric_history(resumed, "train_loss")) == 40
    dead = tracking.client().get_run(mlrun.info.run_id)
    assert dead.info.status == "FAILED" and "the flow run ended Crashed" in dead.data.tags["error"]


def test_an_upload_is_verified_file_by_file(stack, tmp_path):
    from tasks.services import storage

    local = tmp_path / "model"
    local.mkdir()
    (local / "model.safetensors").write_bytes(b"w" * 5000)
    (local / "config.json").write_text('{"a": 1}')
    uri = f"s3://{Settings.load().s3_bucket}/tests/verify"
    storage.upload_dir(local, uri)
    assert storage.verify_upload(local, uri) == 5000 + 8
    client = storage.s3_client()
    bucket, prefix = storage.split_uri(uri)
    client.put_object(Bucket=bucket, Key=f"{prefix}/model.safetensors", Body=b"w" * 4000)  # cut short
    with pytest.raises(storage.UploadError, match="model.safetensors: 4000 bytes stored, 5000 uploaded"):
        storage.verify_upload(local, uri)
    client.put_object(Bucket=bucket, Key=f"{prefix}/model.safetensors", Body=b"x" * 5000)  # same size, other bytes
    with pytest.raises(storage.UploadError, match="model.safetensors: stored MD5 .* differs"):
        storage.verify_upload(local, uri)
    client.delete_object(Bucket=bucket, Key=f"{prefix}/config.json")
    with pytest.raises(storage.UploadError, match="config.json: missing"):
        storage.verify_upload(local, uri)


def test_s3_restarted_during_the_model_upload_leaves_no_partial_version(stack):
    """SeaweedFS stopped as the merged model is written and started again 5 s later: the upload is retried and
    checked file by file before registering, or the run fails; no version points at a partial upload."""
    from tasks.services import storage

    name = "fineflow-s3restart"
    params = {"overrides": {**QUICK, "registry": {"model_name": name}}, "force": True}  # force: really merge
    flow_run_id = start_deployment("finetune/quickstart", params)
    deadline, merged = time.monotonic() + 600, None
    while time.monotonic() < deadline:
        mlrun = tracking.run_for_flow_run(str(flow_run_id))
        if mlrun:
            train = Settings.load().home / "runs" / mlrun.info.run_id / "train"
            merged = train / "finetune" / "lazyllm_merge"
            if (train / "mlflow_model" / "MLmodel").is_file():  # saved as an MLflow model: the upload starts
                break
        time.sleep(0.2)
    assert merged is not None and (merged / "model.safetensors").is_file(), "the merge never wrote the model"
    local_stack.stop("s3")
    time.sleep(5)
    local_stack.up("free")
    logs: list[str] = []
    state = follow(flow_run_id, timeout_s=900, echo=logs.append)
    versions = registry.client().search_model_versions(f"name = '{name}'")
    print(f"S3 restarted during the upload: the run ended {state.name}")
    if state.is_completed():
        (version,) = versions
        assert storage.verify_upload(merged, registry.files_uri(name, version.version)) > 0  # whole, file by file
        assert "every file checked" in "\n".join(logs)
    else:  # failing cleanly is allowed too: then nothing is registered
        assert state.is_failed() and versions == []
