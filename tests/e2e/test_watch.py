"""Retraining triggered by new data, on the real stack: a file pushed to the quickstart pipeline's data home
starts a finetune run by itself (watch flow -> event -> deployment trigger); the same file again starts
nothing; a bad file is announced, and its run fails before training with production untouched."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from infra.demo import follow, prefect_api, start_deployment
from tasks.pipeline import incoming
from tasks.services import registry, storage, tracking
from tasks.settings import Settings
from tests.support.paths import DATASET

pytestmark = pytest.mark.stack
MODEL = "fineflow-quickstart"


def finetune_runs_since(since: float) -> list:
    """Flow runs of finetune/quickstart created after ``since`` (epoch seconds), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with prefect_api(), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["quickstart"])))
    return sorted((r for r in runs if r.created.timestamp() > since), key=lambda r: r.created)


def wait_for_run(since: float, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if runs := finetune_runs_since(since):
            return runs[0]
        time.sleep(2)
    return None


def watch_once() -> str:
    logs: list[str] = []
    state = follow(start_deployment("watch/data"), timeout_s=300, echo=logs.append)
    assert state.is_completed(), logs
    return "\n".join(logs)


def test_the_watch_runs_every_minute_once_deployed(stack):
    from datetime import timedelta

    assert stack["watch_schedules"] == [{"interval": timedelta(seconds=60), "active": True}]


def test_new_data_starts_a_run_by_itself_and_the_same_data_does_not(stack, tmp_path):
    records = json.loads(DATASET.read_text())[:-40]  # the bundled set less 40 records: new data
    path = tmp_path / "word_ops_v2.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    since = time.time()
    uri = incoming.push(path, "quickstart")
    assert uri == f"s3://{Settings.load().s3_bucket}/incoming/quickstart/word_ops_v2.jsonl"
    assert storage.object_sha256(uri) == digest
    logs = watch_once()
    assert f"quickstart: new data {uri} (sha256 {digest[:12]}" in logs and "announced fineflow.dataset.updated" in logs
    run = wait_for_run(since)
    assert run is not None, "no finetune/quickstart run started after the event"
    assert run.parameters["data_path"] == uri
    run_logs: list[str] = []
    state = follow(run.id, timeout_s=1200, echo=run_logs.append)
    assert state.is_completed(), "\n".join(run_logs)
    version = tracking.run_for_flow_run(str(run.id)).data.tags["registered_version"]
    tags = registry.version_tags(MODEL, version)
    params = tracking.run_for_flow_run(str(run.id)).data.params
    assert tags["dataset_file_hash"] == digest and tags["dataset_hash"] == params["dataset.hash"]
    assert params["dataset.source"] == uri and int(params["dataset.n_train"]) + int(params["dataset.n_val"]) + \
        int(params["dataset.n_duplicates"]) == len(records)
    assert registry.alias_version(MODEL, "production") == version

    # The same bytes again, under another name: production was trained on them, so nothing starts.
    since = time.time()
    (tmp_path / "again.jsonl").write_bytes(path.read_bytes())
    incoming.push(tmp_path / "again.jsonl", "quickstart")
    logs = watch_once()
    assert "again.jsonl is what production was trained on" in logs
    assert wait_for_run(since, timeout_s=30) is None


def test_bad_new_data_fails_its_run_before_training_and_production_keeps_serving(stack, tmp_path):
    production = registry.alias_version(MODEL, "production")
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{"instruction": 3}\n')
    since = time.time()
    uri = incoming.push(bad, "quickstart")
    watch_once()
    run = wait_for_run(since)
    assert run is not None and run.parameters["data_path"] == uri
    logs: list[str] = []
    state = follow(run.id, timeout_s=300, echo=logs.append)
    assert state.is_failed()
    assert f"{uri}, line 3, field 'output': missing required field" in "\n".join(logs)
    mlrun = tracking.run_for_flow_run(str(run.id))
    assert mlrun.info.status == "FAILED" and mlrun.data.tags["failed_step"] == "prepare"
    assert "train_loss" not in mlrun.data.metrics
    assert registry.alias_version(MODEL, "production") == production
    # Announced once: the next watch leaves it be.
    since = time.time()
    assert "was announced already" in watch_once()
    assert wait_for_run(since, timeout_s=20) is None
