"""The model router is bounded before it reads: the key is checked before any of the body, a declared length over
the limit is refused unread, a streamed (chunked) body is cut at it, and its status is behind the key; /health
stays open for probes and a target that needs no key gets none asked.

Where the target is a closed port, a request that passes the router's checks is forwarded and gets 502, one refused
by them never gets that far; a live target (``echo``) shows what is forwarded (method, path, query, headers but the
hop-by-hop ones, the body) and relayed back, and the requests in flight counted per target."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from tasks import net
from tasks.servers import router

KEY = "ff-router-test-key"


@pytest.fixture()
def client(tmp_path):
    from starlette.testclient import TestClient

    state = tmp_path / "m@production.json"
    router.write_state(state, {"model": "m@production", "port": 1})
    router.switch(state, f"http://127.0.0.1:{net.free_port()}", "3")
    with TestClient(router.create_app(state, KEY)) as c:
        c.state_path = state
        yield c


def test_the_key_is_checked_before_the_body_is_read(client):
    read = []

    def body():
        for _ in range(4):
            read.append(1)
            yield b"x" * 1024

    refused = client.post("/v1/chat/completions", content=body())
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    assert len(read) <= 1, read  # not read through: refused before the body (the client sends its first chunk)
    assert client.post("/v1/completions", headers={"Authorization": "Bearer nope"}, json={}).status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    assert client.post("/v1/completions", headers=auth, json={"prompt": "hi"}).status_code == 502  # forwarded
    assert client.get("/health").status_code == 502  # open: forwarded without the key
    assert client.get("/router/health").json() == {"status": "ok", "serving": True}


def test_bodies_over_the_limit_are_refused_declared_or_streamed(client, monkeypatch):
    monkeypatch.setattr(router, "MAX_BODY", 10_000)
    auth = {"Authorization": f"Bearer {KEY}"}
    declared = client.post("/v1/completions", headers={**auth, "Content-Length": "400000000"}, content=b"x")
    assert declared.status_code == 413 and "over the limit of 10000 bytes" in declared.json()["error"]["message"]

    def chunked():
        for _ in range(50):
            yield b"x" * 1000

    assert client.post("/v1/completions", headers=auth, content=chunked()).status_code == 413
    assert client.post("/v1/completions", headers=auth, content=b"x" * 9_000).status_code == 502


def test_status_is_behind_the_key_and_a_keyless_target_asks_for_none(client):
    assert client.get("/router/status").status_code == 401
    status = client.get("/router/status", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert status["version"] == "3" and status["inflight"] == {}
    target = router.read_state(client.state_path)["target"]
    router.switch(client.state_path, target, "4", api_key=False)  # an endpoint served with api_key: false
    assert client.post("/v1/completions", json={"prompt": "hi"}).status_code == 502


@contextmanager
def served(app):
    """``app`` served by uvicorn on a free port in a thread, for the block; yields its URL."""
    import threading
    import time

    import uvicorn

    port = net.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture()
def echo():
    """A live target: answers 201 with what it received (method, path, query, headers, body) and a header of its
    own; ``/slow`` answers after a second."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def received(request):
        if request.url.path == "/slow":
            await asyncio.sleep(1)
        return JSONResponse({"method": request.method, "path": request.url.path, "query": str(request.query_params),
                             "headers": dict(request.headers), "body": (await request.body()).decode()}, 201,
                            headers={"x-echo": "yes"})

    with served(Starlette(routes=[Route("/{path:path}", received, methods=["GET", "POST", "PUT"])])) as url:
        yield url


def test_requests_are_forwarded_whole_and_answers_relayed(client, echo, monkeypatch):
    auth = {"Authorization": f"Bearer {KEY}"}
    router.switch(client.state_path, None, "0")
    empty = client.post("/v1/completions", headers=auth, json={})
    assert empty.status_code == 503 and empty.json() == {"error": {"message": "no version is being served",
                                                                   "type": "server_error"}}
    router.switch(client.state_path, echo, "5")  # the router reads the state again when the file changes
    monkeypatch.setattr(router, "MAX_BODY", 10_000)
    answer = client.put("/v1/x?a=1&b=two", headers={**auth, "X-Custom": "kept", "Keep-Alive": "timeout=99"},
                        content=b"y" * 10_000)  # exactly the limit: forwarded
    got = answer.json()
    assert answer.status_code == 201 and answer.headers["x-echo"] == "yes"
    assert (got["method"], got["path"], got["query"], got["body"]) == ("PUT", "/v1/x", "a=1&b=two", "y" * 10_000)
    assert got["headers"]["x-custom"] == "kept" and got["headers"]["authorization"] == f"Bearer {KEY}"
    # Hop-by-hop headers are each connection's own: not passed on; the target gets its own Host.
    assert "keep-alive" not in got["headers"] and got["headers"]["host"] == echo.removeprefix("http://")
    refused = client.post("/v1/x", headers={"Authorization": f"Basic {KEY}"}, content=b"z")
    assert refused.json() == {"error": {"message": "a valid API key is required: Authorization: Bearer <key>",
                                        "type": "authentication_error"}}
    status = client.get("/router/status", headers=auth).json()
    assert status == {"target": echo, "version": "5", "model": "m@production", "inflight": {}}


def test_requests_in_flight_are_counted_per_target_until_their_answer_ends(client, echo):
    import threading

    auth = {"Authorization": f"Bearer {KEY}"}
    router.switch(client.state_path, echo, "6")
    slow = threading.Thread(target=lambda: client.get("/slow", headers=auth))
    slow.start()
    try:
        import time

        deadline = time.monotonic() + 5
        while not (seen := client.get("/router/status", headers=auth).json()["inflight"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert seen == {echo: 1}
    finally:
        slow.join()
    assert client.get("/router/status", headers=auth).json()["inflight"] == {}


def test_drain_waits_for_the_requests_in_flight_to_a_target(client, echo):
    """``drain`` (what a promotion calls before it stops the old endpoint) against the router over HTTP: at once
    when nothing is in flight, after the slow request ends otherwise, False when that takes longer than allowed,
    and at once where no router answers."""
    import threading
    import time

    import httpx

    auth = {"Authorization": f"Bearer {KEY}"}
    router.switch(client.state_path, echo, "7")
    with served(router.create_app(client.state_path, KEY)) as url:
        assert router.drain(url, echo, auth, timeout_s=5)
        slow = threading.Thread(target=lambda: httpx.get(f"{url}/slow", headers=auth, timeout=10))
        slow.start()
        deadline = time.monotonic() + 5
        while not httpx.get(f"{url}/router/status", headers=auth).json()["inflight"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert not router.drain(url, echo, auth, timeout_s=0.3)  # still in flight after 0.3 s
        assert router.drain(url, "http://127.0.0.1:1", auth, timeout_s=0.3)  # another target: nothing in flight
        started = time.monotonic()
        assert router.drain(url, echo, auth, timeout_s=10)
        assert time.monotonic() - started < 2
        slow.join(timeout=5)
        assert not slow.is_alive()
    assert router.drain(url, echo, auth, timeout_s=5)  # the router is gone: nothing in flight through it
