"""The model router is bounded before it reads: the key is checked before any of the body, a declared length over
the limit is refused unread, a streamed (chunked) body is cut at it, and its status is behind the key; /health
stays open for probes and a target that needs no key gets none asked.

The target is a closed port: a request that passes the router's checks is forwarded and gets 502, one refused by
them never gets that far."""

from __future__ import annotations

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
