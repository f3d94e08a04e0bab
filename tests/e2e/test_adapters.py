"""Many finetunes, one base (``deploy.serve: adapter``), on the real stack: three pipelines on different data
register three adapter versions served by one shared endpoint of the tiny model; each answers as greedy decoding
of the base with that adapter by hand (loaded from MLflow by a client that knows only the tracking URI); a new
version of one is promoted past a shadow canary while the other two keep answering, no request failing; an adapter
trained on another base revision is refused with a message naming both; recorded traffic and feedback become the
next dataset, which trains a version that its canary holds for too few requests and a later watch tick promotes,
its lineage naming the feedback; a stopped bucket fails no request.

The pipelines run through the stack's worker (``finetune/quickstart`` with overrides), their data in the bucket.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from infra import stack as local_stack
from infra.demo import follow, start_deployment
from tasks.data.readers import SUFFIXES
from tasks.pipeline import incoming, lineage, pending
from tasks.pipeline.feedback import card_of, described
from tasks.servers.adapters import BASE_RECORD
from tasks.servers.router import read_state
from tasks.servers.shadow import read_pairs
from tasks.services import keys, registry, storage
from tasks.serving import adapter_endpoints, adapters, canary, endpoints, rollout
from tasks.serving.platforms.local import router_name, router_state_path
from tasks.settings import Settings
from tests.support.paths import REPO
from tests.support.stack import client_env
from tests.support.traffic import recorded

UPPER, LOWER = "Convert the word to upper case.", "Convert the word to lower case."
MODELS = {"upper": "fineflow-adapter-upper", "lower": "fineflow-adapter-lower", "mixed": "fineflow-adapter-mixed"}
WORDS = ("saw", "lamp", "door", "fish", "cat", "tree")
# 3 adapters, 2 in memory: one reloads; every request through a route recorded to the bucket with its answer.
DEPLOY = {"backend": "relay", "serve": "adapter", "max_adapters": 2, "traffic": {"share": 1.0}}
# Serving is what is tested: every candidate passes (the tiny model does not learn lower case in a few steps).
GATE = {"metric": "val_loss", "min_improvement": -100.0, "allow_regression": True}


def prompt(instruction: str, word: str) -> str:
    return f"### Instruction:\n{instruction}\n{word}\n\n### Response:\n"


def data_uri(name: str, records: list[dict]) -> str:
    uri = f"s3://{Settings.load().s3_bucket}/test-data/adapters/{name}.json"
    bucket, key = storage.split_uri(uri)
    storage.s3_client().put_object(Bucket=bucket, Key=key, Body=json.dumps(records).encode())
    return uri


def run_pipeline(name: str, data: str, steps: int, promotion: dict | None = None) -> dict:
    overrides = {"name": f"adapters-{name}", "registry": {"model_name": MODELS[name]}, "deploy": DEPLOY,
                 "data": {"val_set_size": 24},
                 "finetune": {"params": {"max_steps": steps, "save_steps": steps}},
                 "evaluate": {"max_samples": 24, "gate": GATE}, **({"promotion": promotion} if promotion else {})}
    flow_run_id = start_deployment("finetune/quickstart", {"overrides": overrides, "data_path": data})
    logs: list[str] = []
    state = follow(flow_run_id, timeout_s=1200, echo=logs.append)
    assert state.is_completed(), "\n".join(logs[-60:])
    version = registry.alias_version(MODELS[name], "production")
    assert version, "\n".join(logs[-60:])
    return {"version": version, "tags": registry.version_tags(MODELS[name], version)}


def ask(url: str, text: str, model: str | None = None, client: httpx.Client | None = None) -> httpx.Response:
    body = {"prompt": text, "max_tokens": 8, **({"model": model} if model else {})}
    return (client or httpx).post(f"{url}/v1/completions", json=body, headers=keys.auth_headers(), timeout=120)


def by_hand(models: list[str], questions: dict[str, list[str]], home: Path) -> dict[str, list[tuple[str, float]]]:
    """For each model's production version, loaded from MLflow by a client with only the tracking URI (the
    adapter folder, PEFT on the base its ``fineflow_base.json`` names): greedy decoding of each question written
    out, with the smallest gap between the first two logits over the answer."""
    script = """
import json, sys, mlflow.artifacts, torch
from pathlib import Path
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
asked, out = json.loads(sys.argv[1]), {}
for name, questions in asked.items():
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@production")) / "adapter"
    base = json.loads((folder / "fineflow_base.json").read_text())
    tok = AutoTokenizer.from_pretrained(base["base_model_path"])
    model = AutoModelForCausalLM.from_pretrained(base["base_model_path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(folder)).eval()
    out[name] = []
    for q in questions:
        ids, new, gaps = tok(tok.bos_token + q, add_special_tokens=False).input_ids, [], []
        with torch.inference_mode():
            for _ in range(8):
                top = model(input_ids=torch.tensor([ids + new])).logits[0, -1].topk(2)
                gaps.append(float(top.values[0] - top.values[1]))
                if int(top.indices[0]) == tok.eos_token_id:
                    break
                new.append(int(top.indices[0]))
        out[name].append([tok.decode(new, skip_special_tokens=True), min(gaps)])
print("ANSWERS=" + json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", script, json.dumps({MODELS[m]: questions[m] for m in models})],
                          env=client_env(home), cwd=home, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.split("ANSWERS=")[-1])
    return {m: [tuple(x) for x in answers[MODELS[m]]] for m in models}


@pytest.fixture(scope="module")
def served(stack, tmp_path_factory):
    records = json.loads((REPO / "infra/datasets/word_ops.json").read_text())  # upper case, and twice
    upper = [r for r in records if r["instruction"] == UPPER]
    lower = [{"instruction": LOWER, "input": r["output"], "output": r["input"]} for r in upper]
    data = {"upper": data_uri("upper", upper), "lower": data_uri("lower", lower), "mixed": data_uri("mixed", records)}
    versions = {name: run_pipeline(name, data[name], 160) for name in MODELS}
    own = {"upper": [prompt(UPPER, w) for w in WORDS], "lower": [prompt(LOWER, w.upper()) for w in WORDS],
           "mixed": [prompt(UPPER, w) for w in WORDS]}
    questions = sorted({q for qs in own.values() for q in qs})
    hand = by_hand(list(MODELS), {name: questions for name in MODELS}, tmp_path_factory.mktemp("client"))
    # Each adapter's question is one of its own task it answers least ambiguously: no near tie that another
    # summation order (a batch of other requests beside it) could flip.
    expected = {}
    for name in MODELS:
        answer, gap, question = max(((*hand[name][questions.index(q)], q) for q in own[name]), key=lambda x: x[1])
        assert gap > 1e-3, (name, answer, gap)
        expected[name] = (question, answer)
    # A question the adapters answer differently (the most different answers), none with a near tie: it shows whose
    # weights served.
    telling = max(((q, {n: hand[n][i][0] for n in MODELS}) for i, q in enumerate(questions)
                   if min(hand[n][i][1] for n in MODELS) > 1e-3), key=lambda x: len(set(x[1].values())))
    assert len(set(telling[1].values())) > 1, hand
    yield {"data": data, "versions": versions, "expected": expected, "telling": telling}
    # What the session's later tests (a restore after `down` and `up`) need not serve again: the three models,
    # their routes, adapters and the shared endpoint.
    shared = {v["tags"]["endpoint_url"] for v in versions.values()}
    for name in MODELS.values():
        endpoints.stop(router_name(name, "production"))
        registry.client().delete_registered_model(name)
    for record in (adapter_endpoints.root() / "served").glob("*.json"):
        adapter_endpoints.unload(record.stem)
    for ep in endpoints.list_endpoints():
        if ep.url in shared:
            endpoints.stop(ep.name)


def routes(served) -> dict[str, str]:
    return {name: registry.client().get_registered_model(MODELS[name]).tags["url_production"] for name in MODELS}


def test_three_pipelines_serve_three_adapters_on_one_endpoint_each_as_by_hand(served):
    tags = {name: v["tags"] for name, v in served["versions"].items()}
    assert {t["serve"] for t in tags.values()} == {"adapter"}
    shared = {t["endpoint_url"] for t in tags.values()}
    assert len(shared) == 1, shared  # one endpoint serves all three
    bases = [ep for ep in endpoints.list_endpoints() if ep.name.startswith("base-tiny-llama-")]
    assert [ep.url for ep in bases] == list(shared)
    names = {name: t["adapter_name"] for name, t in tags.items()}
    listed = endpoints.adapters_listed(bases[0])
    assert set(names.values()) <= set(listed), listed
    # The version is the adapter: its MLflow model holds PEFT's files and names the base and its revision.
    for t in tags.values():
        assert t["base_model"] == "tiny-llama" and t["base_model_revision"].startswith("sha256:")
        assert t["model_files"].endswith("/adapter")

    url = routes(served)
    for name, (question, answer) in served["expected"].items():
        via_route = ask(url[name], question)
        via_base = ask(next(iter(shared)), question, model=names[name])
        assert via_route.status_code == 200 and via_base.status_code == 200, (via_route.text, via_base.text)
        assert via_route.json()["choices"][0]["text"] == answer == via_base.json()["choices"][0]["text"], name
    # Three adapters, three behaviours: one question, three answers, each from the adapter its route names.
    question, answers = served["telling"]
    assert {name: ask(url[name], question).json()["choices"][0]["text"] for name in MODELS} == answers


def test_a_new_adapter_version_is_promoted_while_the_others_answer_without_a_failure(served):
    url, names = routes(served), {n: v["tags"]["adapter_name"] for n, v in served["versions"].items()}
    shared = served["versions"]["upper"]["tags"]["endpoint_url"]
    results: dict[str, list[tuple[int, str]]] = {n: [] for n in MODELS}
    stop = threading.Event()

    def traffic(name: str) -> None:
        question = served["expected"][name][0]
        deadline = time.monotonic() + 900  # bounded: the promotion below takes a few minutes at most
        with httpx.Client(timeout=120) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    r = ask(url[name], question, client=client)
                    results[name].append((r.status_code, r.json()["choices"][0]["text"] if r.status_code == 200
                                          else r.text))
                except (httpx.HTTPError, ValueError, KeyError) as e:  # a failed request, counted as one
                    results[name].append((0, f"{type(e).__name__}: {e}"))
                time.sleep(0.05)

    threads = [threading.Thread(target=traffic, args=(n,)) for n in MODELS]
    for t in threads:
        t.start()
    # New inputs: a new candidate, trained, then judged on a share of the live requests to its route before it is
    # promoted (a shadow canary: the clients keep production's answers meanwhile).
    canary_cfg = {"share": 0.5, "min_requests": 8, "max_wait_s": 300, "max_p95_latency_ratio": 20}
    try:
        again = run_pipeline("upper", served["data"]["upper"], 200, {"canary": canary_cfg})
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=180)
    assert int(again["version"]) > int(served["versions"]["upper"]["version"])
    assert again["tags"]["canary"].startswith("passed: 8 mirrored requests"), again["tags"]["canary"]
    pairs = read_pairs(canary.pairs_path(MODELS["upper"], again["tags"]["endpoint_name"]))
    assert len(pairs) == 8 and {p["version"] for p in pairs} == {again["tags"]["endpoint_name"]}
    old_answer = served["expected"]["upper"][1]  # what the clients got during the canary: production's
    assert {canary.answer_text(p["production"]["body"]) for p in pairs} == {old_answer}
    assert {text for _, text in results["upper"]} <= {old_answer} | {canary.answer_text(p["candidate"]["body"])
                                                                     for p in pairs}
    for name in MODELS:
        statuses = [s for s, _ in results[name]]
        assert statuses and set(statuses) == {200}, (name, [r for r in results[name] if r[0] != 200][:3])
    for name in ("lower", "mixed"):  # the others answered as before, throughout
        assert {text for _, text in results[name]} == {served["expected"][name][1]}, name
    new_adapter = again["tags"]["adapter_name"]
    listed = endpoints.adapters_listed(endpoints.get(next(
        ep.name for ep in endpoints.list_endpoints() if ep.url == shared)))
    assert new_adapter in listed and names["upper"] not in listed, listed  # the replaced one unloaded
    assert names["lower"] in listed and names["mixed"] in listed
    assert again["tags"]["endpoint_url"] == shared


def test_a_rollback_loads_the_replaced_adapter_again_from_the_registry(served):
    """After the promotion above: the replaced adapter was unloaded; a rollback fetches it from the registry, loads it
    on the shared endpoint and moves the route back."""
    model, first = MODELS["upper"], served["versions"]["upper"]
    fetched = adapter_endpoints.root() / "files" / model / first["version"]
    assert not fetched.exists()
    done = rollout.rollback(model)
    assert done.version == first["version"]
    assert (fetched / BASE_RECORD).is_file()  # fetched from the registry's source, not taken from the run's folder
    question, answer = served["expected"]["upper"]
    assert ask(routes(served)["upper"], question).json()["choices"][0]["text"] == answer
    base = next(ep for ep in endpoints.list_endpoints() if ep.url == first["tags"]["endpoint_url"])
    listed = endpoints.adapters_listed(base)
    assert first["tags"]["adapter_name"] in listed and len(listed) == 3, listed  # the rolled-back one unloaded


def test_an_adapter_of_another_base_revision_is_refused_naming_both(served, tmp_path):
    tags = served["versions"]["lower"]["tags"]
    folder = adapter_endpoints.root() / "files" / "stranger"
    shutil.rmtree(folder, ignore_errors=True)
    storage.fetch(tags["model_files"], folder)
    record = json.loads((folder / BASE_RECORD).read_text())
    (folder / BASE_RECORD).write_text(json.dumps({**record, "base_model_revision": "sha256:0123456789abcdef"}))
    relaunch = json.loads(tags["deploy_config"])
    with pytest.raises(adapters.BaseMismatch, match=r"sha256:0123456789abcdef.*is at revision sha256:"):
        adapters.serve(relaunch, str(folder), "stranger")
    # The endpoint refuses it too when asked directly, naming both revisions, and loads nothing.
    base = next(ep for ep in endpoints.list_endpoints() if ep.url == tags["endpoint_url"])
    with pytest.raises(adapter_endpoints.AdapterRefused, match=r"sha256:0123456789abcdef.*revision sha256:"):
        adapter_endpoints.load(base, "stranger", str(folder), relaunch)
    assert "stranger" not in endpoints.adapters_listed(base) and adapter_endpoints.get("stranger") is None


def test_a_shared_base_restarted_by_its_supervisor_serves_its_adapters_again(served):
    """The base's server killed: its supervisor starts it again, and it comes back knowing the adapters it had
    (its adapter state file), so every route answers as before with nothing loaded by hand."""
    import os
    import signal

    import psutil

    shared = served["versions"]["lower"]["tags"]["endpoint_url"]
    base = next(ep for ep in endpoints.list_endpoints() if ep.url == shared)
    listed, before = endpoints.adapters_listed(base), base.restarts()
    server = psutil.Process(base.pid).children()[0]  # under the supervisor, which leads the group
    os.kill(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 180
    while (base.restarts() == before or not base.healthy()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert base.restarts() == before + 1 and base.healthy(), Path(base.log_path).read_text()[-3000:]
    assert endpoints.adapters_listed(base) == listed
    url = routes(served)
    for name, (question, answer) in served["expected"].items():  # upper: rolled back to its first version above
        reply = ask(url[name], question)
        assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == answer, (name, reply.text)


def test_production_traffic_and_feedback_reach_the_bucket_and_the_next_dataset(served):
    """Each request through a route that records traffic gets an id; the request, its answer and the feedback on
    it are written by the router to the bucket under traffic/<model>/<version>/<date>/; the scheduled build's
    next dataset is the pipeline's data plus the corrected pair, pushed to its data home with a card naming the
    version the feedback came from."""
    name = MODELS["lower"]
    version = registry.alias_version(name, "production")
    question, answer = served["expected"]["lower"]
    reply = ask(routes(served)["lower"], question)
    rid = reply.headers["x-fineflow-request-id"]
    fed = httpx.post(f"{routes(served)['lower']}/v1/feedback", headers=keys.auth_headers(), timeout=30,
                     json={"request_id": rid, "rating": 1, "correction": answer.upper()})
    assert fed.status_code == 200, fed.text
    mine = recorded(name, version, [rid])
    kinds = {r["kind"]: r for r in mine}
    assert set(kinds) == {"request", "feedback"}, mine
    assert json.loads(kinds["request"]["answer"])["choices"][0]["text"] == answer
    assert (kinds["feedback"]["rating"], kinds["feedback"]["correction"]) == (1, answer.upper())
    # The scheduled build (feedback/build, run now on the stack's worker): the pipeline's data plus the corrected
    # pair, pushed with its card to the pipeline's data home, where the data trigger starts retraining.
    pipeline = "adapters-lower"
    flow_run_id = start_deployment("feedback/build", {"overrides": {"name": pipeline, "registry": {"model_name": name}},
                                                      "data_path": served["data"]["lower"]})
    logs: list[str] = []
    assert follow(flow_run_id, timeout_s=600, echo=logs.append).is_completed(), "\n".join(logs[-40:])
    pushed = storage.newest_object(incoming.home(pipeline), SUFFIXES)
    assert pushed and f"pushed {pushed}" in "\n".join(logs), logs[-20:]
    bucket, key = storage.split_uri(pushed)
    rows, card = json.loads(storage.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()), card_of(pushed)
    instruction = question.split("### Instruction:\n")[1].split("\n\n### Response:")[0]
    assert rows[-1] == {"instruction": instruction, "input": "", "output": answer.upper()}
    assert card["feedback_records"] >= 1 and card["versions"].get(version, 0) >= 1
    assert len(rows) == card["base_records"] + card["feedback_records"]


def test_a_run_on_the_feedback_dataset_held_by_its_canary_is_decided_at_a_later_watch_tick(served):
    """The loop closed: the dataset the scheduled build pushed (above) trains the next version, as the data trigger
    passes it; its canary (``on_too_few: hold``) sees no live request in its wait, so the version is registered
    pending, the alias unmoved; a tick with still too few copies leaves it pending; requests through the route
    (clients get production's answers) are copied to it meanwhile, and the next tick promotes it; its lineage
    names the production feedback it was trained on."""
    name, (question, answer) = MODELS["lower"], served["expected"]["lower"]
    before = registry.alias_version(name, "production")
    pushed = storage.newest_object(incoming.home("adapters-lower"), SUFFIXES)
    card = card_of(pushed)
    assert card and card["feedback_records"] >= 1, pushed
    hold = {"share": 1.0, "min_requests": 4, "max_wait_s": 2, "max_p95_latency_ratio": 20, "on_too_few": "hold"}
    run_pipeline("lower", pushed, 160, {"canary": hold})
    version = str(max(int(v.version) for v in registry.client().search_model_versions(f"name = '{name}'")))
    tags = registry.version_tags(name, version)
    assert (tags["status"], tags["canary"]) == ("pending", "too few requests: 0 of 4 mirrored requests"), tags
    assert registry.alias_version(name, "production") == before and version != before
    assert pending.decide_all() == [] and registry.version_tags(name, version)["status"] == "pending"

    url, path = routes(served)["lower"], canary.pairs_path(name, tags["endpoint_name"])
    replies = [ask(url, question) for _ in range(6)]
    assert [(r.status_code, r.json()["choices"][0]["text"]) for r in replies] == [(200, answer)] * 6
    deadline = time.monotonic() + 60  # the copies are sent after each answer, in the background
    while len(read_pairs(path)) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    decided = pending.decide_all()
    assert [(d.version, d.promoted) for d in decided] == [(version, True)], decided
    tags = registry.version_tags(name, version)
    assert "status" not in tags and tags["canary"].startswith("passed: 4 mirrored requests"), tags
    assert registry.alias_version(name, "production") == version
    assert "shadow" not in read_state(router_state_path(name, "production"))  # copying ended with the decision
    copied = {canary.answer_text(p["candidate"]["body"]) for p in read_pairs(path)}
    assert ask(url, question).json()["choices"][0]["text"] in copied  # the route serves the candidate now
    info = lineage.lineage(f"{name}/{version}")
    assert info.dataset_feedback == described(card) and before in card["versions"], (info.dataset_feedback, card)
    assert any(line.startswith("trained on ") and line.endswith(described(card))
               for line in lineage.render(info).splitlines())


def test_with_the_bucket_stopped_every_request_is_answered_and_the_lost_records_counted(served):
    """SeaweedFS stopped while clients send requests through a route that records its traffic: every request is
    answered (200, production's answer); the records the bucket could not take are counted, not raised; with the
    bucket back, recording goes on."""
    url, question = routes(served)["upper"], served["expected"]["upper"][0]

    def counts() -> dict[str, int]:
        return httpx.get(f"{url}/router/status", headers=keys.auth_headers(), timeout=30).json()["traffic"]

    def wait_for(kind: str, at_least: int) -> dict[str, int]:
        deadline = time.monotonic() + 240  # a batch every 5 s; a write to a stopped bucket retries, then fails
        while (now := counts()).get(kind, 0) < at_least and time.monotonic() < deadline:
            time.sleep(1)
        return now

    recorded = counts().get("recorded", 0)
    answer = ask(url, question).json()["choices"][0]["text"]  # what this route answers now
    before = wait_for("recorded", recorded + 1)  # its record written while the bucket is up
    local_stack.stop("s3")
    try:
        replies = [ask(url, question) for _ in range(5)]
        assert [(r.status_code, r.json()["choices"][0]["text"]) for r in replies] == [(200, answer)] * 5
        assert all(r.headers.get("x-fineflow-request-id") for r in replies)
        lost = wait_for("failed", before.get("failed", 0) + 5)
        assert lost.get("failed", 0) == before.get("failed", 0) + 5, (before, lost)
    finally:
        local_stack.up("free")
    assert ask(url, question).status_code == 200
    after = wait_for("recorded", lost.get("recorded", 0) + 1)
    assert after["recorded"] == lost.get("recorded", 0) + 1 and after["failed"] == lost["failed"], (lost, after)
