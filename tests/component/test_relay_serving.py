"""The built-in server as a server: API keys, batching, streaming, sampling honoured or refused, bounds before
any model work, and the official ``openai`` client against it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from tasks import inference
from tasks.deploy import RelayServer
from tasks.masking import redact_text
from tasks.servers.batching import Batcher, GenRequest, generate_batch
from tasks.servers.relay import create_app, server
from tasks.services import keys
from tasks.serving import endpoints
from tests.support.models import greedy_by_hand
from tests.support.paths import TINY_MODEL

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def tiny():
    return inference.load_model(str(TINY_MODEL))


def fresh_app():
    """The app the tests ask: made in a test itself where that test checks a request handler in detail (a mutation
    tester attributes the handler's code to the tests that made its app), else the module's (``app``)."""
    return create_app(str(TINY_MODEL), "tiny", api_key=KEY, max_batch=16, batch_wait_ms=20)


@pytest.fixture(scope="module")
def app():
    return fresh_app()


@pytest.fixture(scope="module")
def served(fineflow_home):
    """The server started as the deploy step starts it: detached, the key in its environment only."""
    engine = RelayServer(name="tiny")
    command = engine.with_api_key(engine.cmd(str(TINY_MODEL)), keys.api_key())
    assert keys.api_key() not in " ".join(command.argvs[-1])
    ep = endpoints.start("relay-serving", command, "relay", str(TINY_MODEL))
    yield ep
    endpoints.stop("relay-serving")


def test_the_api_key_is_made_once_kept_private_and_masked(fineflow_home):
    key = keys.api_key()
    path = keys.key_path()
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text().strip() == key and len(key) > 30
    assert keys.api_key() == key  # made once
    assert redact_text(f"curl -H 'Authorization: Bearer {key}'") == "curl -H 'Authorization: Bearer ******'"
    assert keys.auth_headers() == {"Authorization": f"Bearer {key}"}


def test_every_api_route_wants_the_key_and_health_does_not(app):
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}, {"Authorization": "Basic x"}):
            for method, path in (("get", "/v1/models"), ("post", "/v1/completions"), ("post", "/v1/chat/completions"),
                                 ("get", "/docs"), ("get", "/openapi.json"), ("get", "/redoc")):
                resp = getattr(c, method)(path, headers=headers, **({"json": {"prompt": "x"}} if method == "post" else {}))
                assert resp.status_code == 401, (headers, path)
                assert resp.json()["error"]["type"] == "authentication_error"
        assert c.get("/v1/models", headers=AUTH).status_code == 200
        assert c.get("/openapi.json", headers=AUTH).json()["paths"]["/v1/completions"]


def test_the_access_log_never_holds_a_query_string(served):
    """A key sent in a query string (refused: keys go in the Authorization header) is not written to the endpoint's
    log; the request is, without its query."""
    import time

    key = keys.api_key()
    assert httpx.get(f"{served.url}/v1/models", params={"api_key": key, "x": "1"}, timeout=30).status_code == 401
    log = Path(served.log_path)
    for _ in range(100):  # the server writes its access line just after answering
        if "GET /v1/models?[query hidden]" in log.read_text():
            break
        time.sleep(0.05)
    assert '"GET /v1/models?[query hidden] HTTP/1.1" 401' in log.read_text() and key not in log.read_text()


def test_without_a_key_the_server_binds_only_loopback(monkeypatch):
    monkeypatch.delenv("FINEFLOW_API_KEY", raising=False)
    with pytest.raises(SystemExit, match="refusing to serve on 0.0.0.0 without an API key"):
        server(["--model", str(TINY_MODEL), "--port", "1", "--host", "0.0.0.0"])
    monkeypatch.setenv("FINEFLOW_API_KEY", KEY)
    assert server(["--model", str(TINY_MODEL), "--port", "1", "--host", "0.0.0.0"]).config.host == "0.0.0.0"


def test_concurrent_requests_are_decoded_together_and_each_gets_its_own_answer(app, tiny):
    prompts = [inference.render_prompt("alpaca", {"instruction": "Convert the word to upper case.", "input": w})
               for w in ("abc", "saw", "tree", "moon", "a", "river", "cold", "ink")]
    expected = [greedy_by_hand(*tiny, p, 10) for p in prompts]
    with TestClient(app) as c:
        before = app.state.batcher.batches
        results: dict[int, str] = {}

        def ask(i: int) -> None:
            r = c.post("/v1/completions", json={"prompt": prompts[i], "max_tokens": 10}, headers=AUTH)
            results[i] = r.json()["choices"][0]["text"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [results[i] for i in range(len(prompts))] == expected
    ran = app.state.batcher.batches - before
    assert ran < len(prompts) and app.state.batcher.largest > 1  # fewer batches than requests


def test_a_batch_of_different_lengths_and_budgets_equals_each_request_alone(tiny):
    model, tok = tiny
    prompts = ["the", inference.render_prompt("alpaca", {"instruction": "Reverse the word.", "input": "stone"}), "a b"]
    budgets = [3, 12, 7]
    reqs = [GenRequest(tok(tok.bos_token + p, add_special_tokens=False).input_ids, n) for p, n in zip(prompts, budgets)]
    generate_batch(model, tok, reqs)
    assert [r.text for r in reqs] == [greedy_by_hand(model, tok, p, n) for p, n in zip(prompts, budgets)]
    assert all(r.completion_tokens <= n for r, n in zip(reqs, budgets))
    assert reqs[0].finish_reason == "length" and reqs[0].completion_tokens == 3


def test_a_row_that_fails_fails_only_its_own_request(tiny):
    """Failures injected into rows of a live batch (a client callback that raises on its first text, a seed the generator
    cannot take): those requests get their error; the others complete with the answers they have alone."""

    model, tok = tiny
    prompts = ["the", inference.render_prompt("alpaca", {"instruction": "Reverse the word.", "input": "stone"}),
               "a b", "the"]

    def request(p: str, **kw) -> GenRequest:
        return GenRequest(tok(tok.bos_token + p, add_special_tokens=False).input_ids, 10, ignore_eos=True, **kw)

    alone = [greedy_by_hand(model, tok, p, 10) for p in prompts[:3]]
    events: dict[int, list] = {i: [] for i in range(4)}
    pieces = []

    def broken(kind, value):  # the client's side of row 1 breaks at its first piece of text
        pieces.append(kind)
        if kind == "text" and pieces.count("text") == 1:
            raise ConnectionResetError("client went away mid-stream")
        events[1].append((kind, value))

    reqs = [request(prompts[0]), request(prompts[1], on_event=broken), request(prompts[2]),
            request(prompts[3], temperature=1.0, seed=2**64)]
    for i in (0, 2, 3):
        reqs[i].on_event = lambda kind, value, i=i: events[i].append((kind, value))
    batcher = Batcher(model, tok, max_batch=4, wait_ms=200)
    assert (batcher.batches, batcher.largest) == (0, 0)  # what the log reads counts from nothing
    try:
        for r in reqs:
            batcher.submit(r)
        tick = threading.Event()
        for _ in range(600):
            if all(e and e[-1][0] in ("done", "error") for i, e in events.items() if i != 1) and \
                    reqs[1].error is not None:
                break
            tick.wait(0.05)
    finally:
        batcher.close()
    assert (batcher.batches, batcher.largest) == (1, 4)  # one batch: the failures happened inside it
    assert [reqs[0].text, reqs[2].text] == [alone[0], alone[2]]
    assert events[0][-1] == ("done", None) and events[2][-1] == ("done", None)
    assert isinstance(reqs[1].error, ConnectionResetError) and events[1][-1][0] == "error"
    assert events[3] == [("error", reqs[3].error)] and reqs[3].text == ""  # its seed: no generator takes 2**64


def test_streaming_gives_the_same_text_piece_by_piece_with_usage(tiny):
    """Its own app: the stream's code is this test's (see ``fresh_app``). Every answer has an id of its kind and
    the second it was made; a stream's chunks share one id."""
    import re
    import time

    with TestClient(fresh_app()) as c:
        began = int(time.time())
        whole = c.post("/v1/completions", json={"prompt": "the", "max_tokens": 12}, headers=AUTH).json()
        events = stream_events(c, "/v1/completions", {"prompt": "the", "max_tokens": 12, "stream": True,
                                                      "stream_options": {"include_usage": True}})
        assert re.fullmatch(r"cmpl-[0-9a-f]{12}", whole["id"]) and began <= whole["created"] <= time.time()
        assert len({e["id"] for e in events[:-1]} | {whole["id"]}) == 2  # one id a stream, another the whole one
        assert all(e["object"] == "text_completion" and began <= e["created"] <= time.time() for e in events[:-1])
        assert events[-1] == "[DONE]" and events[-2]["usage"] == whole["usage"] and events[-2]["choices"] == []
        pieces = [e["choices"][0]["text"] for e in events[:-2]]
        assert len(pieces) > 3 and "".join(pieces) == whole["choices"][0]["text"] == greedy_by_hand(*tiny, "the", 12)
        assert events[-3]["choices"][0]["finish_reason"] == "length"
        assert all(e["choices"][0]["finish_reason"] is None for e in events[:-3])
        two = stream_events(c, "/v1/completions", {"prompt": ["the", "a b"], "max_tokens": 6, "stream": True})
        texts, ends = ["", ""], {}
        for e in two[:-1]:  # each piece in a chunk of its own, naming its choice
            (choice,) = e["choices"]
            texts[choice["index"]] += choice["text"]
            if choice["finish_reason"]:
                ends[choice["index"]] = choice["finish_reason"]
        assert texts == [greedy_by_hand(*tiny, p, 6) for p in ("the", "a b")] and ends == {0: "length", 1: "length"}
        chat = stream_events(c, "/v1/chat/completions", {"messages": [{"role": "user", "content": "the"}],
                                                         "max_tokens": 8, "stream": True})
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        assert chat[0]["choices"] == [role]
        assert chat[0]["object"] == "chat.completion.chunk" and chat[-1] == "[DONE]"
        assert re.fullmatch(r"chatcmpl-[0-9a-f]{12}", chat[0]["id"]) and len({e["id"] for e in chat[:-1]}) == 1
        text = "".join(e["choices"][0]["delta"]["content"] for e in chat[:-1])
        prompt = inference.render_prompt("alpaca", {"messages": [{"role": "user", "content": "the"}]})
        assert text == greedy_by_hand(*tiny, prompt, 8)


def test_a_client_that_goes_away_mid_stream_stops_its_row(monkeypatch):
    """A real server (uvicorn in this process, so that the test sees the request's row): the client reads the
    first piece of a long stream and hangs up; the row is cancelled at a next step, its tokens unspent."""
    import time

    from tasks import net
    from tasks.servers.openai_api import uvicorn_server
    from tests.support.asgi import running

    app, port = fresh_app(), net.free_port()
    batcher, rows = app.state.batcher, []
    submit = batcher.submit
    monkeypatch.setattr(batcher, "submit", lambda r: rows.append(r) or submit(r))
    with running(uvicorn_server(app, "127.0.0.1", port)):
        body = {"prompt": "the", "max_tokens": 250, "ignore_eos": True, "stream": True}
        with httpx.Client(timeout=60) as c:
            with c.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, headers=AUTH) as r:
                first = next(line for line in r.iter_lines() if line.startswith("data: "))
        assert '"text"' in first and len(rows) == 1
        deadline = time.monotonic() + 60
        while rows[0].finish_reason is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rows[0].finish_reason == "cancelled" and rows[0].completion_tokens < 250, rows[0]


def stream_events(c, path: str, body: dict) -> list:
    import json

    with c.stream("POST", path, json=body, headers=AUTH) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def test_sampling_parameters_are_honoured(tiny):
    with TestClient(fresh_app()) as c:
        def text(**body) -> str:
            r = c.post("/v1/completions", json={"prompt": "the", "max_tokens": 12, **body}, headers=AUTH)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        greedy = greedy_by_hand(*tiny, "the", 12)
        assert text() == text(temperature=0) == greedy
        sampled = {text(temperature=1.5, seed=s) for s in range(6)}
        assert len(sampled) > 1 and sampled != {greedy}  # temperature is not ignored
        assert text(temperature=1.5, seed=7) == text(temperature=1.5, seed=7)  # the seed is honoured
        assert text(temperature=1.5, top_p=1e-6, seed=3) == greedy  # only the top token is left: top_p honoured
        cut = text(stop=["instruction"])
        assert cut == greedy[:greedy.index("instruction")] and "instruction" in greedy
        full = c.post("/v1/completions", json={"prompt": "the", "max_tokens": 40, "ignore_eos": True},
                      headers=AUTH).json()
        assert full["usage"]["completion_tokens"] == 40 and full["choices"][0]["finish_reason"] == "length"


# By the prompt's length: over the context once tokenized, and over it by its characters alone.
PROMPT_REFUSALS = {800: "prompt is 801 tokens; with max_tokens 32 it is over the model's context of 256",
                   200_000: "prompt is over 224 tokens, the model's context of 256 less max_tokens 32"}


@pytest.mark.parametrize("body,param", [
    ({"temperature": -5}, "temperature"), ({"temperature": 2.5}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"n": 2}, "n"), ({"presence_penalty": 0.5}, "presence_penalty"), ({"logprobs": 3}, "logprobs"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 513}, "max_tokens"), ({"prompt": []}, "prompt"),
    ({"prompt": "x " * 400}, "prompt"), ({"prompt": "x" * 200_000}, "prompt"), ({"prompt": 5}, "prompt"),
    # Values that would break the whole batch's arithmetic (logits / 1e-300 overflow; a seed torch cannot take).
    ({"temperature": 1e-300}, "temperature"), ({"seed": 2**64}, "seed"), ({"seed": -1}, "seed"),
    ({"stop": ["x"] * 17}, "stop"), ({"stop": "x" * 257}, "stop"),
])
def test_bad_requests_are_refused_before_any_model_work(body, param):
    app = fresh_app()
    with TestClient(app) as c:
        before = app.state.batcher.batches
        resp = c.post("/v1/completions", json={"prompt": "the", **body}, headers=AUTH)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"].startswith(param) and resp.json()["error"]["message"]
        if param == "prompt" and isinstance(body["prompt"], str):  # the two the server's own bounds refuse
            assert resp.json()["error"]["param"] == "prompt"
            assert resp.json()["error"]["message"] == PROMPT_REFUSALS[len(body["prompt"])], resp.text
        assert app.state.batcher.batches == before


def test_a_huge_body_is_refused_unread_and_memory_stays_flat(served):
    def rss_mb() -> float:
        status = Path(f"/proc/{served.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024

    headers = keys.auth_headers()
    before = rss_mb()
    for _ in range(3):
        resp = httpx.post(f"{served.url}/v1/completions", json={"prompt": "x" * 5_000_000}, headers=headers,
                          timeout=60)
        assert resp.status_code == 413 and "over the limit of 1000000 bytes" in resp.json()["error"]["message"]
    assert rss_mb() - before < 50
    ok = httpx.post(f"{served.url}/v1/completions", json={"prompt": "the", "max_tokens": 2}, headers=headers)
    assert ok.status_code == 200


def test_health_answers_while_a_long_batch_runs(served):
    headers = keys.auth_headers()

    async def load_and_probe() -> tuple[list[int], int, list[int]]:
        started, finished = asyncio.Event(), []

        async def stream(c: httpx.AsyncClient) -> int:
            body = {"prompt": "the", "max_tokens": 250, "ignore_eos": True, "stream": True}
            async with c.stream("POST", "/v1/completions", json=body) as r:
                async for _ in r.aiter_lines():
                    started.set()  # decoding is under way
            finished.append(1)
            return r.status_code

        async with httpx.AsyncClient(base_url=served.url, headers=headers, timeout=120) as c:
            work = [asyncio.create_task(stream(c)) for _ in range(16)]
            await started.wait()
            probes = [(await c.get("/health", timeout=10)).status_code for _ in range(3)]
            running = 16 - len(finished)
            return probes, running, list(await asyncio.gather(*work))

    probes, running, done = asyncio.run(load_and_probe())
    assert probes == [200, 200, 200] and running > 0  # answered while the requests were still decoding
    assert done == [200] * 16


def test_the_openai_client_completes_chats_and_streams_with_the_key_only(served, tiny):
    base = f"{served.url}/v1"
    client = openai.OpenAI(base_url=base, api_key=keys.api_key(), max_retries=0)
    done = client.completions.create(model="tiny", prompt="the", max_tokens=6)
    assert done.choices[0].text == greedy_by_hand(*tiny, "the", 6) and done.usage.completion_tokens == 6
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "the"}], max_tokens=6)
    prompt = inference.render_prompt("alpaca", {"messages": [{"role": "user", "content": "the"}]})
    assert chat.choices[0].message.content == greedy_by_hand(*tiny, prompt, 6)
    streamed = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "the"}],
                                              max_tokens=6, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == \
        chat.choices[0].message.content
    assert [m.id for m in client.models.list()] == ["tiny"]
    for wrong in ("nope", keys.api_key()[:-1]):
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key=wrong, max_retries=0).completions.create(model="tiny", prompt="a")
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="the", temperature=-5)
    assert served.healthy()  # still up after all of it


def test_a_crashed_server_is_restarted_and_the_restart_recorded(served):
    import json
    import os
    import signal
    import time

    import psutil

    server = psutil.Process(served.pid).children()[0]  # under the supervisor, which leads the group
    os.kill(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while (served.restarts() == 0 or not served.healthy()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert served.restarts() == 1 and served.healthy() and psutil.Process(served.pid).children()[0].pid != server.pid
    assert [r["exit_code"] for r in json.loads(Path(served.restarts_file).read_text())] == [-signal.SIGKILL]
    assert "server exited with code -9; restart 1 of 3" in Path(served.log_path).read_text()
    ok = httpx.post(f"{served.url}/v1/completions", json={"prompt": "the", "max_tokens": 2},
                    headers=keys.auth_headers())
    assert ok.status_code == 200


def test_a_batch_that_fails_whole_fails_each_request_and_the_worker_goes_on(tiny):
    """A prompt the model cannot embed (a token id past its vocabulary) fails the whole forward pass: every request
    of that batch hears the error, the worker takes the next batch, and ``on_step`` ran after each step."""

    model, tok = tiny
    done: dict[int, tuple[str, object]] = {}
    finished = threading.Event()

    def request(i: int, ids: list[int]) -> GenRequest:
        def on_event(kind: str, value: object) -> None:
            if kind in ("done", "error"):
                done[i] = (kind, value)
                if len(done) == 3:
                    finished.set()
        return GenRequest(ids, 4, ignore_eos=True, on_event=on_event)

    batcher = Batcher(model, tok, max_batch=2, wait_ms=500)
    steps: list[int] = []
    batcher.on_step = lambda: steps.append(batcher.batches)
    good = tok(tok.bos_token + "the", add_special_tokens=False).input_ids
    try:
        batcher.submit(request(0, good))
        batcher.submit(request(1, [model.config.vocab_size + 5]))
        batcher.submit(request(2, good))  # the next batch
        assert finished.wait(60)
    finally:
        batcher.close()
    assert done[0][0] == done[1][0] == "error" and done[0][1] is done[1][1] and isinstance(done[0][1], IndexError)
    assert done[2] == ("done", None) and (batcher.batches, batcher.largest) == (2, 2)
    assert steps.count(2) == 4 + 1  # four decoding steps, then the batch's end


def test_a_failed_generation_is_a_500_saying_why_or_the_streams_last_event(monkeypatch):
    """The model failing mid-request (a device lost, say; here its forward pass made to raise): a whole answer
    becomes a 500 naming the failure, a stream (whose 200 is sent already) ends with the error and ``[DONE]``;
    the server answers the next request once the model works again."""
    app = fresh_app()
    model = app.state.batcher.model

    def lost(*args, **kwargs):
        raise RuntimeError("the device was lost")

    body = {"prompt": "the", "max_tokens": 4}
    with TestClient(app) as c:
        monkeypatch.setattr(model, "forward", lost)
        whole = c.post("/v1/completions", json=body, headers=AUTH)
        assert whole.status_code == 500 and whole.json() == {"error": {
            "message": "generation failed: the device was lost", "type": "server_error", "param": None, "code": None}}
        events = stream_events(c, "/v1/completions", {**body, "stream": True})
        assert events == [{"error": {"message": "generation failed: the device was lost", "type": "server_error"}},
                          "[DONE]"]
        monkeypatch.undo()
        again = c.post("/v1/completions", json=body, headers=AUTH)
        assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] > 0


def test_the_batcher_thread_is_named_and_does_not_keep_a_process_alive():
    """A server that exits without closing its batcher is not held by the worker thread (a daemon)."""
    batcher = Batcher(None, None, 1, 0)  # here too, so mutation testing links this test to the constructor
    try:
        assert (batcher.thread.name, batcher.thread.daemon, batcher.thread.is_alive()) == ("fineflow-batcher", True,
                                                                                           True)
    finally:
        batcher.close()
    assert not batcher.thread.is_alive()
    code = ("import threading; from tasks.servers.batching import Batcher; Batcher(None, None, 1, 0); "
            "print([t.name for t in threading.enumerate() if t.daemon])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0 and out.stdout.strip() == "['fineflow-batcher']", out.stderr
