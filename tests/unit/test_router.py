"""The model router is bounded before it reads: the key is checked before any of the body, a declared length over
the limit is refused unread, a streamed (chunked) body is cut at it, and its status is behind the key; /health
stays open for probes and a target that needs no key gets none asked.

Where the target is a closed port, a request that passes the router's checks is forwarded and gets 502, one refused
by them never gets that far; a live target (``echo``) shows what is forwarded (method, path, query, headers but the
hop-by-hop ones, the body) and relayed back, and the requests in flight counted per target."""

from __future__ import annotations

import json

import pytest

from tasks import net
from tasks.servers import router
from tests.support.asgi import KEY, running, served

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


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
    refused = client.get("/router/status")
    assert refused.status_code == 401 and refused.json() == {"error": {
        "message": "a valid API key is required: Authorization: Bearer <key>", "type": "authentication_error"}}
    status = client.get("/router/status", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert status["version"] == "3" and status["inflight"] == {}
    target = router.read_state(client.state_path)["target"]
    router.switch(client.state_path, target, "4", api_key=False)  # an endpoint served with api_key: false
    assert client.post("/v1/completions", json={"prompt": "hi"}).status_code == 502


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
                            headers={"x-echo": "yes", "keep-alive": "timeout=99"})

    with served(Starlette(routes=[Route("/{path:path}", received, methods=METHODS)])) as url:
        yield url


def test_an_adapter_version_gets_its_model_name_set_in_each_json_request(client, echo):
    """A LoRA adapter on a shared base: the route names the adapter in ``model`` whatever the client sent; a body
    that is not a JSON object goes as it is; the replaced target is told apart by its adapter (``drain``)."""
    auth = {"Authorization": f"Bearer {KEY}"}
    router.switch(client.state_path, echo, "1", adapter="m-run1")
    sent = client.post("/v1/completions", headers=auth, json={"model": "anything", "prompt": "hi"}).json()
    assert json.loads(sent["body"]) == {"model": "m-run1", "prompt": "hi"}
    assert json.loads(client.post("/v1/completions", headers=auth, json={"prompt": "x"}).json()["body"]) == \
        {"model": "m-run1", "prompt": "x"}
    assert client.post("/v1/x", headers=auth, content=b"[1, 2]").json()["body"] == "[1, 2]"
    assert client.post("/v1/x", headers=auth, content=b"not json").json()["body"] == "not json"
    assert client.get("/v1/models", headers=auth).json()["method"] == "GET"
    assert router.switch(client.state_path, echo, "2", adapter="m-run2") == f"{echo}#m-run1"
    assert json.loads(client.post("/v1/c", headers=auth, json={}).json()["body"]) == {"model": "m-run2"}
    assert router.switch(client.state_path, echo, "3") == f"{echo}#m-run2"  # a merged version: sent as it is
    assert json.loads(client.post("/v1/c", headers=auth, json={"model": "z"}).json()["body"]) == {"model": "z"}
    assert client.get("/router/status", headers=auth).json()["adapter"] is None


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
    assert "keep-alive" not in answer.headers  # the target's hop-by-hop headers are not relayed either
    assert (got["method"], got["path"], got["query"], got["body"]) == ("PUT", "/v1/x", "a=1&b=two", "y" * 10_000)
    assert got["headers"]["x-custom"] == "kept" and got["headers"]["authorization"] == f"Bearer {KEY}"
    # Hop-by-hop headers are each connection's own: not passed on; the target gets its own Host.
    assert "keep-alive" not in got["headers"] and got["headers"]["host"] == echo.removeprefix("http://")
    refused = client.post("/v1/x", headers={"Authorization": f"Basic {KEY}"}, content=b"z")
    assert refused.json() == {"error": {"message": "a valid API key is required: Authorization: Bearer <key>",
                                        "type": "authentication_error"}}
    status = client.get("/router/status", headers=auth).json()
    assert status == {"target": echo, "version": "5", "model": "m@production", "adapter": None, "shadow": {},
                      "traffic": {}, "inflight": {}}


def test_requests_in_flight_are_counted_per_target_until_their_answer_ends(client, echo):
    import threading

    auth = {"Authorization": f"Bearer {KEY}"}
    router.switch(client.state_path, echo, "6")
    slow = [threading.Thread(target=lambda: client.get("/slow", headers=auth)) for _ in range(2)]
    for thread in slow:
        thread.start()
    try:
        import time

        deadline = time.monotonic() + 5
        while (seen := client.get("/router/status", headers=auth).json()["inflight"]) != {echo: 2}:
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
    finally:
        for thread in slow:
            thread.join()
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


def test_every_method_is_forwarded(client, echo):
    auth = {"Authorization": f"Bearer {KEY}"}
    router.switch(client.state_path, echo, "8")
    for method in METHODS:
        answer = client.request(method, "/v1/x", headers=auth)
        assert answer.status_code == 201, method
        if method != "HEAD":
            assert answer.json()["method"] == method


def test_errors_say_what_went_wrong_in_the_openai_shape():
    import json

    for status, kind in ((401, "authentication_error"), (413, "invalid_request_error"), (400, "invalid_request_error"),
                         (502, "server_error"), (503, "server_error")):
        response = router.error(status, f"why {status}")
        assert response.status_code == status
        assert json.loads(response.body) == {"error": {"message": f"why {status}", "type": kind}}


def test_a_target_that_does_not_answer_is_a_502_and_leaves_nothing_in_flight(client):
    auth = {"Authorization": f"Bearer {KEY}"}
    target = router.read_state(client.state_path)["target"]  # a closed port
    answer = client.post("/v1/completions", headers=auth, json={})
    assert answer.status_code == 502
    assert answer.json()["error"]["message"].startswith(f"the endpoint at {target} did not answer: ")
    assert answer.json()["error"]["type"] == "server_error"
    assert client.get("/router/status", headers=auth).json()["inflight"] == {}


def test_a_router_without_state_serves_nothing_and_says_so(tmp_path):
    from starlette.testclient import TestClient

    missing = tmp_path / "none@production.json"
    assert router.read_state(missing) == {}
    with TestClient(router.create_app(missing, KEY)) as c:
        assert c.get("/router/health").json() == {"status": "ok", "serving": False}
        assert c.post("/v1/x", headers={"Authorization": f"Bearer {KEY}"}).status_code == 503


def test_the_state_is_read_again_only_when_its_file_changes(client, echo):
    """A switch is a new file (a new modification time): seen at once. The same modification time is the same
    state: not read again for every request."""
    import os

    auth = {"Authorization": f"Bearer {KEY}"}
    previous = router.read_state(client.state_path)["target"]
    assert router.switch(client.state_path, echo, "11") == previous  # the target it replaced
    assert client.get("/router/status", headers=auth).json()["version"] == "11"
    stat = client.state_path.stat()
    router.write_state(client.state_path, {**router.read_state(client.state_path), "version": "12"})
    os.utime(client.state_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert client.get("/router/status", headers=auth).json()["version"] == "11"
    os.utime(client.state_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert client.get("/router/status", headers=auth).json()["version"] == "12"


def test_the_key_is_what_follows_the_scheme_and_no_key_configured_asks_for_none(tmp_path, echo):
    from starlette.testclient import TestClient

    state = tmp_path / "m@production.json"
    router.write_state(state, {"model": "m@production", "port": 1, "target": echo, "version": "1"})  # no api_key
    with TestClient(router.create_app(state, "a key with spaces")) as c:
        assert c.post("/v1/x").status_code == 401  # a state that does not say: the endpoint requires the key
        assert c.post("/v1/x", headers={"Authorization": "Bearer a key with spaces"}).status_code == 201
        assert c.post("/v1/x", headers={"Authorization": "bearer a key with spaces"}).status_code == 201
    with TestClient(router.create_app(state, None)) as c:  # no key in the router's environment (loopback only)
        assert c.get("/router/status").json()["target"] == echo
        assert c.post("/v1/x").status_code == 201


def test_the_command_line_serves_the_state_on_its_port_with_the_key_from_the_environment(tmp_path, echo,
                                                                                         monkeypatch):
    import httpx

    from tasks.servers.header_deadline import HeaderDeadline

    state = tmp_path / "m@production.json"
    port = net.free_port()
    router.write_state(state, {"model": "m@production", "port": port})
    router.switch(state, echo, "2")
    monkeypatch.setenv("FINEFLOW_API_KEY", KEY)
    srv = router.server(["--state", str(state)])
    config = srv.config
    assert (config.host, config.port, config.log_level) == ("127.0.0.1", port, "warning")
    assert (config.timeout_keep_alive, config.limit_concurrency, config.http) == (5, 512, HeaderDeadline)
    assert router.server(["--state", str(state), "--host", "localhost"]).config.host == "localhost"
    with running(srv):
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/router/health").json() == {"status": "ok", "serving": True}
        assert httpx.get(f"{url}/router/status").status_code == 401
        status = httpx.get(f"{url}/router/status", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert (status["target"], status["version"]) == (echo, "2")
    with pytest.raises(SystemExit):
        router.server([])  # no state
