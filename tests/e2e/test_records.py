"""What a pipeline run leaves in MLflow, checked as its users meet it: the registered version loads and serves
with MLflow's own tools from a client that knows only the tracking URI; the datasets are the run's inputs; the
lineage command reports what the run recorded; a plan creates nothing; the run report renders in a browser.

One quickstart run through the worker, under a model name of its own (a candidate trained earlier in the session
for the same inputs is reused: the run then deploys and registers it).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from infra.demo import follow, start_deployment
from tasks.pipeline.config import load_config
from tasks.pipeline.lineage import lineage
from tasks.services import cache, registry, storage, tracking
from tests.support.paths import REPO
from tests.support.stack import client_env

MODEL = "fineflow-records"
WORDS = ("saw", "cat", "tree", "lamp", "door", "fish")  # the prompt is the one the model answers least ambiguously


def prompt(word: str) -> str:
    return f"### Instruction:\nConvert the word to upper case.\n{word}\n\n### Response:\n"


@pytest.fixture(scope="module")
def produced(stack):
    flow_run_id = start_deployment("finetune/quickstart", {"overrides": {"registry": {"model_name": MODEL}}})
    logs: list[str] = []
    state = follow(flow_run_id, timeout_s=1200, echo=logs.append)
    assert state.is_completed(), "\n".join(logs)
    run = tracking.client().get_run(tracking.run_for_flow_run(str(flow_run_id)).info.run_id)
    version = registry.alias_version(MODEL, "production")
    assert version == run.data.tags["registered_version"]
    return {"flow_run_id": str(flow_run_id), "run": run, "version": version}


def greedy_from_files(files_uri: str, dest: Path) -> tuple[str, str, float]:
    """The prompt the version's checkpoint files answer least ambiguously, loaded with transformers here: (prompt,
    its greedy answer, the smallest gap between the first and second logit over the answer's tokens). Another
    process may sum in another order: a near tie could decode either way there, so the test compares answers only
    where no step is one."""
    import transformers

    storage.download_dir(files_uri, dest)
    tok = transformers.AutoTokenizer.from_pretrained(dest)
    model = transformers.AutoModelForCausalLM.from_pretrained(dest)
    best = ("", "", -1.0)
    for word in WORDS:
        ids = tok(prompt(word), return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
        gap = min(float(step[0].topk(2).values[0] - step[0].topk(2).values[1]) for step in out.scores)
        if gap > best[2]:
            answer = tok.decode(out.sequences[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
            best = (prompt(word), answer, gap)
    return best


def test_mlflow_loads_and_serves_the_version_with_only_the_tracking_uri(produced, tmp_path):
    mv = tracking.client().get_model_version(MODEL, produced["version"])
    assert mv.source.startswith("models:/m-")
    question, expected, gap = greedy_from_files(mv.tags["model_files"], tmp_path / "files")
    assert expected.strip() and gap > 1e-3, (question, expected, gap)
    env = client_env(tmp_path / "client")
    script = ("import json, mlflow.transformers as mt\n"
              f"pipe = mt.load_model('models:/{MODEL}@production')\n"
              f"out = pipe({question!r}, max_new_tokens=8, do_sample=False, return_full_text=False)\n"
              "print('ANSWER=' + json.dumps(out[0]['generated_text']))\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.split("ANSWER=")[-1])
    assert answer == expected  # the registered MLflow model is the merged model, token for token

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                               f"models:/{MODEL}@production", "--env-manager", "local", "-h", "127.0.0.1",
                               "-p", str(port)], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "serve.log", "wb"), start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        reply = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=120,
                           json={"inputs": [question], "params": {"max_new_tokens": 8}})
        assert reply.status_code == 200, reply.text
        assert reply.json()["predictions"] == [expected]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)

    # The logged model: linked to the run that merged it, READY, with its flavors and pinned requirements.
    from mlflow.entities import LoggedModelStatus

    model_id = mv.source.removeprefix("models:/")
    logged = tracking.client().get_logged_model(model_id)
    assert logged.status == LoggedModelStatus.READY
    assert tracking.client().get_run(logged.source_run_id).outputs.model_outputs[0].model_id == model_id
    mlmodel = read_text(f"{tracking.s3_of(logged.artifact_location)}/MLmodel")
    assert "transformers:" in mlmodel and "python_function:" in mlmodel and "text-generation" in mlmodel
    requirements = read_text(f"{tracking.s3_of(logged.artifact_location)}/requirements.txt")
    assert "transformers==" in requirements and "torch==" in requirements and "mlflow==" in requirements


def read_text(uri: str) -> str:
    bucket, key = storage.split_uri(uri)
    return storage.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def test_the_datasets_are_the_runs_inputs(produced):
    run = produced["run"]
    params = run.data.params
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation"}
    for context, name, rows in (("training", "train.jsonl", "dataset.n_train"),
                                ("validation", "val.jsonl", "dataset.n_val")):
        ds = inputs[context]
        uri = json.loads(ds.source)["uri"]
        assert uri == f"{params['dataset.uri']}/{name}"
        digest = storage.object_sha256(uri)  # of the bytes in the bucket
        profile = json.loads(ds.profile)
        assert ds.digest == digest[:36] and profile["sha256"] == digest
        assert profile["num_rows"] == int(params[rows]) and profile["format"] == params["dataset.format"]
        assert profile["dataset_hash"] == run.data.tags["dataset_hash"]
    # The search API finds the run by its dataset.
    found = tracking.client().search_runs([run.info.experiment_id],
                                          filter_string=f"dataset.digest = '{inputs['training'].digest}'")
    assert run.info.run_id in {r.info.run_id for r in found}


def test_lineage_reports_what_the_run_recorded(produced):
    run, c = produced["run"], tracking.client()
    info = lineage(f"{MODEL}@production")
    mv = c.get_model_version(MODEL, produced["version"])
    assert (info.version, info.mlflow_run_id, info.mlflow_model_uri) == (mv.version, run.info.run_id, mv.source)
    assert info.endpoint_url == mv.tags["endpoint_url"] and info.engine == "relay" == mv.tags["backend"]
    assert httpx.get(f"{info.endpoint_url}/health", timeout=10).status_code == 200
    assert info.prefect_flow_run_id == produced["flow_run_id"] and info.prefect_flow_run_state == "Completed"
    assert info.dataset_uri == run.data.params["dataset.uri"] and info.dataset_hash == run.data.tags["dataset_hash"]
    params = run.data.params
    assert (info.n_train, info.n_val) == (int(params["dataset.n_train"]), int(params["dataset.n_val"]))
    assert info.dataset_source_sha256 == hashlib.sha256(Path(info.dataset_source).read_bytes()).hexdigest()
    assert info.base_model == "tiny-llama"
    assert info.base_model_revision == f"sha256:{cache.fingerprint(REPO / 'infra' / 'models' / 'tiny-llama')}"
    revision = cache.git_revision()
    assert (info.code_commit, info.code_dirty) == (revision["code_commit"], revision["code_dirty"])
    assert info.code_version == cache.code_version()
    expected = load_config("deployments/quickstart.yaml", {"registry": {"model_name": MODEL}}).model_dump(mode="json")
    for cfg in (expected, info.config):  # a random default: the port a multi-process launch would use
        cfg["finetune"]["params"].pop("nccl_port")
    assert info.config == expected
    assert info.metrics == {k: float(v) for k, v in mv.tags.items() if k.startswith(("base_", "candidate_"))
                            and k != "candidate_hash"} and "candidate_exact_match" in info.metrics
    assert info.promoted and info.gate == mv.tags["gate"] and info.status == "serving as production"
    by_step = {s.step: s for s in info.steps}
    assert list(by_step) == ["download", "prepare", "finetune", "merge", "evaluate", "deploy"]
    for s in info.steps:
        if s.seconds is not None:
            assert s.seconds == round(run.data.metrics[f"duration_{s.step}_s"], 2) and s.started <= s.ended
    assert by_step["deploy"].seconds is not None and by_step["prepare"].ended <= by_step["deploy"].started

    # The command prints every field.
    out = subprocess.run([sys.executable, "-m", "tasks.pipeline.lineage", f"{MODEL}@production"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env=os.environ)
    assert out.returncode == 0, out.stderr[-2000:]
    for label, value in (("model", f"{MODEL} version {mv.version}"), ("endpoint", info.endpoint_url),
                         ("mlflow run", run.info.run_id), ("prefect flow run", produced["flow_run_id"]),
                         ("dataset", info.dataset_hash), ("dataset rows", f"{info.n_train} train"),
                         ("base model", info.base_model_revision), ("code", info.code_commit),
                         ("gate", info.gate), ("step deploy", "UTC"), ("config", '"model_name": "fineflow-records"')):
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith(label + " ")), "")
        assert value in line, (label, out.stdout)


def footprint() -> dict:
    """What a run would create: MLflow runs and logged models, registered versions, objects in the bucket,
    working directories, Prefect flow runs other than the ones asked for."""
    from tasks.settings import Settings

    c = tracking.client()
    experiments = [e.experiment_id for e in c.search_experiments()]
    home = Settings.load().home
    return {"runs": len(c.search_runs(experiments, max_results=5000)),
            "logged_models": len(c.search_logged_models(experiments, max_results=5000)) if experiments else 0,
            "versions": sum(len(c.search_model_versions(f"name = '{m.name}'")) for m in c.search_registered_models()),
            "objects": len(storage.list_keys(f"s3://{Settings.load().s3_bucket}/")),
            "workdirs": sorted(p.name for p in (home / "runs").iterdir()) if (home / "runs").is_dir() else []}


def test_a_plan_shows_every_step_and_creates_nothing(stack, tmp_path):
    from tasks.services import keys

    before = footprint()
    out = subprocess.run([sys.executable, "-m", "flows.finetune", "deployments/quickstart.yaml", "--plan"], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env=os.environ)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "nothing below has run" in text and "230 train / 60 validation alpaca records" in text
    for step in ("download", "prepare", "finetune", "merge", "evaluate", "deploy", "register"):
        assert f". {step}: " in text, step
    for command in ("-m tasks.finetune.train_lora", "--lora_r 16", "-m tasks.finetune.merge merge", "-m tasks.servers.relay"):
        assert command in text, command
    assert keys.api_key() not in text and "$RUN_DIR" in text
    # Through the worker, as a deployment parameter: the flow run completes and returns the plan.
    flow_run_id = start_deployment("finetune/quickstart", {"plan": True})
    logs: list[str] = []
    assert follow(flow_run_id, timeout_s=600, echo=logs.append).is_completed(), "\n".join(logs)
    shown = "\n".join(logs)  # the printed plan, shortened in the middle by `follow`
    assert "plan of deployments/quickstart.yaml (pipeline quickstart): nothing below has run" in shown
    assert "move production to it if healthy and the gate passed" in shown
    assert footprint() == before


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    """Debian's Chromium, headless, with nothing that reaches for the network (``make test`` installs it)."""
    exe = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    assert exe, "Chromium is not installed: `apt-get install chromium` (make test does it where it can)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1100,1800"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)


def test_the_run_report_renders_in_a_browser(produced, tmp_path):
    from PIL import Image

    run, c = produced["run"], tracking.client()
    page = Path(c.download_artifacts(run.info.run_id, "report/index.html", tmp_path))
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    shot = tmp_path / "report.png"  # out of the repository: the test's own folder
    chromium(f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "profile")
    # The loss curve: every train-loss point the run reports (its own or the run that trained the candidate).
    losses = c.get_metric_history(trained_run(run), "train_loss")
    assert f'class="train" data-points="{len(losses)}"' in dom and len(losses) >= 10
    assert f'{losses[-1].value:.4f} at step {losses[-1].step}' in dom
    # Base and candidate, as the registry records them; the examples; the decision.
    mv = c.get_model_version(MODEL, produced["version"])
    for metric in ("exact_match", "val_loss", "perplexity"):
        assert f"<td>{metric}</td><td>{mv.tags['base_' + metric]}</td><td>{mv.tags['candidate_' + metric]}</td>" in dom
    assert dom.count("<tr>") >= 3 + 5 + 6 + 5 and "candidate answered" in dom
    assert "production -&gt; version" in dom and 'id="gate" class="passed"' in dom
    # Drawn, not only present: the train curve's blue and the validation point's red are on the screenshot.
    pixels = list(Image.open(shot).convert("RGB").get_flattened_data())
    assert sum(1 for p in pixels if p == (31, 119, 180)) > 300
    assert sum(1 for p in pixels if p == (214, 39, 40)) > 50
    metrics = run.data.metrics
    assert metrics["report_cpu_seconds"] > 0 and metrics["report_peak_memory_mb"] > 100
    assert metrics["report_gpu_seconds"] == 0 and metrics["report_train_tokens_per_second"] > 0  # no GPU here


def trained_run(run) -> str:
    """The run whose training produced this run's candidate (itself, or the run it reused)."""
    return run.data.tags.get("trained_by_run", run.info.run_id)


def test_a_large_file_goes_up_in_parts_and_a_failed_upload_leaves_a_failed_model(stack, tmp_path, monkeypatch):
    """``mlflow_model.log_merged`` on its own: with the multipart threshold below the model's size, the weights go
    up as a multipart upload (ETag ``...-N``) through URLs the tracking server signs, and are verified; a model
    whose upload never gets whole is marked FAILED, never READY."""
    from mlflow.entities import LoggedModelStatus

    from tasks.services import mlflow_model
    from tests.support.paths import TINY_MODEL

    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(1 << 20))
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(5 << 20))
    run_id = tracking.start_run("fineflow-records-upload", "multipart", {}, {})
    logged = mlflow_model.log_merged(run_id, TINY_MODEL, "llm", tmp_path / "a")
    bucket, prefix = storage.split_uri(f"{logged.files_uri}/model.safetensors")
    assert storage.s3_client().head_object(Bucket=bucket, Key=prefix)["ETag"].strip('"').endswith("-1")
    assert storage.verify_upload(TINY_MODEL, logged.files_uri) > 0
    assert tracking.client().get_logged_model(logged.model_id).status == LoggedModelStatus.READY

    def corrupt(local: Path, uri: str, client=None) -> int:
        raise storage.UploadError(f"{uri}: model.safetensors: missing")
    monkeypatch.setattr(storage, "verify_upload", corrupt)
    with pytest.raises(storage.UploadError, match="missing"):
        mlflow_model.log_merged(run_id, TINY_MODEL, "llm", tmp_path / "b", attempts=2)
    experiment = tracking.client().get_run(run_id).info.experiment_id
    failed = [m for m in tracking.client().search_logged_models([experiment]) if m.model_id != logged.model_id]
    assert [m.status for m in failed] == [LoggedModelStatus.FAILED]
