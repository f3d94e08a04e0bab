"""Crashes resume and unchanged work is skipped, on the real stack: a trainer killed with kill -9 mid-training
fails its run (keeping its log and the step it reached); the next run of the same pipeline resumes from the last
complete checkpoint; a re-run of the unchanged pipeline skips everything and registers nothing; ``force`` does it
all again. Each run is a module fixture built on the one before (``killed`` -> ``resumed`` -> ``unchanged`` ->
``forced``): a test asks for the run it checks, and the runs it stands on happen first."""

from __future__ import annotations

import shutil
import time

import httpx
import psutil
import pytest

from infra.demo import follow, start_deployment, summary
from tasks.pipeline import steps
from tasks.services import cache, registry, storage, tracking
from tests.support.stack import train_log

pytestmark = pytest.mark.stack
MODEL = "fineflow-resume"
MAX_STEPS, SAVE_STEPS = 80, 30
PARAMS = {"overrides": {"registry": {"model_name": MODEL},
                        "finetune": {"params": {"max_steps": MAX_STEPS, "save_steps": SAVE_STEPS}},
                        "evaluate": {"max_samples": 20, "gate": {"metric": "val_loss", "min_improvement": 0.001}}}}


def trainer_of(key: str) -> psutil.Process | None:
    """The training process working in the candidate's directory (its command line names it)."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "tasks.finetune.train_lora" in cmdline and f"train-{key}" in cmdline:
            return proc
    return None


def run(parameters: dict) -> tuple:
    flow_run_id = start_deployment("finetune/quickstart", parameters)
    logs: list[str] = []
    state = follow(flow_run_id, timeout_s=1200, echo=logs.append)
    return flow_run_id, state, "\n".join(logs), tracking.run_for_flow_run(str(flow_run_id))


def trained_steps(mlrun) -> list[int]:
    return sorted(m.step for m in tracking.client().get_metric_history(mlrun.info.run_id, "train_loss"))


@pytest.fixture(scope="module")
def killed(stack) -> dict:
    """A run whose trainer is killed with kill -9 once checkpoint-30 is complete (step 40 logged)."""
    flow_run_id = start_deployment("finetune/quickstart", PARAMS)
    deadline, mlrun, trainer, key = time.monotonic() + 600, None, None, None
    while time.monotonic() < deadline:
        mlrun = mlrun or tracking.run_for_flow_run(str(flow_run_id))
        if mlrun and any(step >= SAVE_STEPS + 10 for step in trained_steps(mlrun)):
            key = tracking.client().get_run(mlrun.info.run_id).data.tags["candidate_hash"]
            trainer = trainer_of(key)
            break
        time.sleep(0.5)
    trainers = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])
                if "train_lora" in " ".join(p.info["cmdline"] or [])]
    assert trainer is not None, f"no trainer in train-{key} past step {SAVE_STEPS + 10}: {trainers}"
    trainer.kill()  # kill -9
    state = follow(flow_run_id, timeout_s=300, echo=lambda line: None)
    return {"key": key, "state": state, "run": tracking.client().get_run(mlrun.info.run_id)}


@pytest.fixture(scope="module")
def resumed(killed) -> dict:
    """The next run of the same pipeline, on a worker without the killed run's files."""
    shutil.rmtree(cache.workdir(killed["key"]))  # another worker has none of this machine's files
    flow_run_id, state, logs, mlrun = run(PARAMS)
    return {"state": state, "logs": logs, "run": mlrun}


@pytest.fixture(scope="module")
def unchanged(resumed) -> dict:
    """The same pipeline again, nothing changed, after the resumed run."""
    versions = len(registry.client().search_model_versions(f"name = '{MODEL}'"))
    flow_run_id, state, logs, mlrun = run(PARAMS)
    return {"flow_run_id": flow_run_id, "state": state, "logs": logs, "run": mlrun, "versions_before": versions}


@pytest.fixture(scope="module")
def forced(unchanged) -> dict:
    """The same pipeline with ``force``, after the unchanged re-run."""
    versions = len(registry.client().search_model_versions(f"name = '{MODEL}'"))
    flow_run_id, state, logs, mlrun = run({**PARAMS, "force": True})
    return {"state": state, "logs": logs, "run": mlrun, "versions_before": versions}


def test_a_killed_trainer_fails_the_run_which_keeps_its_log_and_step(killed):
    assert killed["state"].is_failed() or killed["state"].is_crashed()
    run_ = killed["run"]
    assert run_.info.status == "FAILED"
    assert run_.data.tags["failed_step"] == "finetune" and "exit code -9" in run_.data.tags["error"]
    assert SAVE_STEPS + 10 <= int(run_.data.tags["last_train_step"]) < MAX_STEPS
    assert "train.log" in [f.path.split("/")[-1] for f in tracking.client().list_artifacts(run_.info.run_id, "logs")]
    assert registry.client().search_model_versions(f"name = '{MODEL}' and run_id = '{run_.info.run_id}'") == []


def test_the_next_run_resumes_from_the_last_complete_checkpoint_even_on_another_worker(killed, resumed):
    # The checkpoint was mirrored to the bucket as it was written, its completion mark last.
    mirrored = storage.list_keys(f"{steps.checkpoints_uri(killed['key'])}/checkpoint-{SAVE_STEPS}/")
    assert any(k.endswith(f"checkpoint-{SAVE_STEPS}/fineflow_complete") for k in mirrored)
    assert any(k.endswith("optimizer.pt") for k in mirrored)
    # The worker had none of the killed run's files: the next run fetched the checkpoint from the bucket.
    state, logs, mlrun = resumed["state"], resumed["logs"], resumed["run"]
    assert state.is_completed(), logs
    assert f"restored checkpoint-{SAVE_STEPS} from" in logs
    resumed_line = next(line for line in train_log(mlrun.info.run_id).splitlines() if "resuming from" in line)
    assert f"checkpoint-{SAVE_STEPS}" in resumed_line
    logged = trained_steps(mlrun)
    assert logged[0] == SAVE_STEPS + 10 and logged[-1] == MAX_STEPS  # quickstart logs every 10 steps
    # Optimizer steps actually run over both runs: the planned ones, plus those redone after the checkpoint.
    total = int(killed["run"].data.tags["last_train_step"]) + (MAX_STEPS - SAVE_STEPS)
    assert MAX_STEPS <= total <= MAX_STEPS + SAVE_STEPS
    assert mlrun.data.tags["cache_hit"] == "false"
    assert registry.client().get_model_version(MODEL, mlrun.data.tags["registered_version"]).run_id == \
        mlrun.info.run_id


def test_an_unchanged_rerun_skips_every_step_and_registers_nothing(resumed, unchanged):
    state, logs, mlrun = unchanged["state"], unchanged["logs"], unchanged["run"]
    assert state.is_completed(), logs
    version = resumed["run"].data.tags["registered_version"]
    tags = mlrun.data.tags
    assert tags["cache_hit"] == "true" and all(tags[f"cache_hit.{step}"] == "true"
                                               for step in ("prepare", "merge", "evaluate", "register"))
    assert "train_loss" not in mlrun.data.metrics  # nothing trained, nothing merged, no engine started:
    assert "tasks.finetune.train_lora" not in logs and "tasks.finetune.merge" not in logs and "serving at" not in logs
    assert f"unchanged: production is version {version}, this candidate" in logs
    assert len(registry.client().search_model_versions(f"name = '{MODEL}'")) == unchanged["versions_before"]
    assert tags["registered_version"] == version
    url = registry.version_tags(MODEL, version)["endpoint_url"]
    assert httpx.get(f"{url}/health").status_code == 200
    # The demo's summary reads an unchanged run as it reads any other (make demo twice).
    shown = summary(unchanged["flow_run_id"])
    assert shown["model"] == f"{MODEL} version {version}" and shown["answer"]


def test_force_trains_again_from_scratch(resumed, forced):
    state, logs, mlrun = forced["state"], forced["logs"], forced["run"]
    assert state.is_completed(), logs
    assert "resuming from" not in train_log(mlrun.info.run_id) and trained_steps(mlrun)[0] == 10
    assert mlrun.data.tags["cache_hit"] == "false" and "cache_hit.evaluate" not in mlrun.data.tags
    assert mlrun.data.tags["registered_version"] != resumed["run"].data.tags["registered_version"]
    assert len(registry.client().search_model_versions(f"name = '{MODEL}'")) == forced["versions_before"] + 1



def test_a_checkpoint_saved_across_nodes_counts_once_every_nodes_part_and_node_0s_marker_are_in(stack, tmp_path):
    """What the driver of a run across machines runs on its nodes (``python -m tasks.services.checkpoints``): node
    0 lists the checkpoints its trainer finished that the bucket lacks; node 1 uploads its part (no marker), node 0
    its own with the marker last; restoring then brings back both nodes' files."""
    import json
    import subprocess
    import sys

    from tasks.services import checkpoints
    from tasks.services.checkpoints import TRAINER_STATE
    from tasks.settings import Settings, environ

    uri = f"s3://{Settings.load().s3_bucket}/checkpoints/nodes-{time.time_ns()}"
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    for step, whole in ((5, True), (7, False)):  # checkpoint-7: its trainer was killed writing it
        (node0 / f"checkpoint-{step}").mkdir(parents=True)
        (node0 / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"w" * 1000)
        (node0 / f"checkpoint-{step}" / TRAINER_STATE).write_text(json.dumps({"global_step": step}) if whole else "{")
    (node1 / "checkpoint-5").mkdir(parents=True)
    (node1 / "checkpoint-5" / "rng_state_1.pth").write_bytes(b"r" * 10)

    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "tasks.services.checkpoints", *args], env=environ(), check=True,
                              capture_output=True, text=True, timeout=120).stdout

    assert json.loads(cli("pending", str(node0), uri)) == ["checkpoint-5"]
    cli("upload", str(node1 / "checkpoint-5"), uri, "--part")
    cli("upload", str(node1 / "checkpoint-9"), uri, "--part")  # no part of it on this node: nothing to upload
    assert json.loads(cli("pending", str(node0), uri)) == ["checkpoint-5"]  # not marked by a part
    cli("upload", str(node0 / "checkpoint-5"), uri)
    assert json.loads(cli("pending", str(node0), uri)) == [] and checkpoints.mirrored(uri) == ["checkpoint-5"]
    restored = checkpoints.restore(tmp_path / "worker", uri, print)
    assert sorted(p.name for p in restored.iterdir()) == ["adapter_model.safetensors", "fineflow_complete",
                                                          "rng_state_1.pth", TRAINER_STATE]
    storage.delete_prefix(uri + "/")
