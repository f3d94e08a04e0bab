"""Production traffic and feedback recorded by the router (``tasks.servers.traffic``): the configured share of
requests gets an id in a header and is written with its answer, masked, in batches under
``traffic/<model>/<version>/<date>/``; feedback on a recorded id is written beside it, and refused clearly (no
key, unknown id, a bad field, too big, too often) with nothing stored; a bucket that refuses every write fails no
client request, and the loss is counted."""

from __future__ import annotations

import json
import time

import pytest

from tasks import masking
from tasks.pipeline.config import load_config
from tasks.pipeline.config_files import ConfigError
from tasks.servers import router, traffic
from tests.support.asgi import KEY, app_answering, served

AUTH = {"Authorization": f"Bearer {KEY}"}
PHONE = r"\b\d{3}-\d{4}\b"


@pytest.fixture()
def routed(tmp_path, monkeypatch):
    """A router recording into ``client.objects`` (key -> records) in front of a live endpoint."""
    from starlette.testclient import TestClient

    monkeypatch.setattr(traffic, "FLUSH_S", 0.1)
    objects: dict[str, list[dict]] = {}

    def put(key: str, data: bytes) -> None:
        objects[key] = [json.loads(line) for line in data.decode().splitlines()]

    state = tmp_path / "m@production.json"
    router.write_state(state, {"model": "m@production", "port": 1})
    with served(app_answering("production")) as production, \
            TestClient(router.create_app(state, KEY, put=put)) as c:
        router.switch(state, production, "7", traffic={"share": 0.5, "mask_patterns": [PHONE]})
        c.state_path, c.objects, c.production = state, objects, production
        yield c


def written(objects: dict, n: int, kind: str = "request", timeout_s: float = 10) -> list[tuple[str, dict]]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = [(k, r) for k, rs in list(objects.items()) for r in rs if r["kind"] == kind]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_share_of_requests_is_recorded_masked_with_an_id_the_client_gets(routed):
    secret = "sk-traffic-" + "y" * 24
    masking.register_secret(secret)
    replies = [routed.post("/v1/completions", headers=AUTH, json={"prompt": f"call 555-{1000 + i} {secret}"})
               for i in range(4)]
    assert routed.get("/v1/models", headers=AUTH).status_code == 200  # a GET is not recorded
    ids = [r.headers.get(traffic.HEADER) for r in replies]
    assert [bool(i) for i in ids] == [False, True, False, True] and all(r.status_code == 200 for r in replies)
    records = written(routed.objects, 2)
    assert sorted(r["request_id"] for _, r in records) == sorted(i for i in ids if i)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    for key, record in records:
        assert key.startswith(f"traffic/m/7/{today}/") and key.endswith(".jsonl")
        assert (record["model"], record["version"], record["path"], record["status"]) == ("m", "7", "/v1/completions",
                                                                                          200)
        assert json.loads(record["answer"])["who"] == "production" and record["latency_s"] > 0
        assert secret not in json.dumps(record) and "555-" not in record["request"]
        assert json.loads(record["request"])["prompt"] == f"call {masking.MASK} {masking.MASK}"
    assert routed.get("/router/status", headers=AUTH).json()["traffic"] == {"recorded": 2}


def test_feedback_on_a_recorded_request_is_kept_beside_it_and_bad_feedback_refused(routed, monkeypatch):
    rid = next(r.headers[traffic.HEADER] for r in (routed.post("/v1/completions", headers=AUTH, json={"prompt": "x"})
                                                   for _ in range(2)) if traffic.HEADER in r.headers)
    good = routed.post("/v1/feedback", headers=AUTH, json={"request_id": rid, "rating": -1,
                                                           "correction": "call 555-0000 instead"})
    assert good.status_code == 200 and good.json() == {"status": "recorded", "request_id": rid}
    (key, kept), = written(routed.objects, 1, "feedback")
    (request_key, _), = written(routed.objects, 1)
    assert key.rsplit("/", 1)[0] == request_key.rsplit("/", 1)[0]  # beside its request
    assert (kept["request_id"], kept["rating"], kept["correction"]) == (rid, -1, f"call {masking.MASK} instead")
    refusals = [
        ({}, {"request_id": rid, "rating": 1}, 401, "a valid API key is required"),
        (AUTH, {"request_id": "0" * 32, "rating": 1}, 404, f"request id {'0' * 32} is not one this route recorded"),
        (AUTH, {"request_id": "not-an-id", "rating": 1}, 400, "feedback: request_id: String should"),
        (AUTH, {"request_id": rid, "rating": 5}, 400, "feedback: rating: Input should be less than or equal to 1"),
        (AUTH, {"request_id": rid}, 400, "give a rating (-1, 0 or 1), a correction, or both"),
        (AUTH, {"request_id": rid, "extra": 1, "rating": 0}, 400, "feedback: extra: Extra inputs"),
        (AUTH, {"request_id": rid, "correction": "z" * 20_000}, 413, "feedback over the limit of 16000 bytes"),
    ]
    for headers, body, status, message in refusals:
        r = routed.post("/v1/feedback", headers=headers, json=body)
        assert (r.status_code, message in r.json()["error"]["message"]) == (status, True), (body, r.text)
    monkeypatch.setattr(traffic, "FEEDBACK_PER_S", 0.0)
    monkeypatch.setattr(traffic, "FEEDBACK_BURST", 0)
    limited = routed.post("/v1/feedback", headers=AUTH, json={"request_id": rid, "rating": 1})
    assert limited.status_code == 429 and "too much feedback" in limited.json()["error"]["message"]
    time.sleep(0.3)
    assert len(written(routed.objects, 2, "feedback", timeout_s=0.5)) == 1  # only the good one was stored
    router.switch(routed.state_path, routed.production, "8")  # a version that records nothing takes no feedback
    off = routed.post("/v1/feedback", headers=AUTH, json={"request_id": rid, "rating": 1})
    assert off.status_code == 404 and "records no traffic (deploy.traffic)" in off.json()["error"]["message"]


def test_a_bucket_that_refuses_every_write_fails_no_request_and_the_loss_is_counted(tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    monkeypatch.setattr(traffic, "FLUSH_S", 0.1)

    def put(key: str, data: bytes) -> None:
        raise ConnectionError("the bucket is down")

    state = tmp_path / "m@production.json"
    router.write_state(state, {"model": "m@production", "port": 1})
    with served(app_answering("production")) as production, TestClient(router.create_app(state, KEY, put=put)) as c:
        router.switch(state, production, "1", traffic={"share": 1.0})
        assert [c.post("/v1/completions", headers=AUTH, json={"prompt": str(i)}).status_code
                for i in range(5)] == [200] * 5
        deadline = time.monotonic() + 10
        while c.get("/router/status", headers=AUTH).json()["traffic"].get("failed", 0) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.get("/router/status", headers=AUTH).json()["traffic"] == {"failed": 5}


def test_traffic_settings_are_checked_when_the_config_loads(tmp_path):
    path = tmp_path / "c.yaml"
    head = "name: x\ndata: {path: infra/datasets/word_ops.json}\nregistry: {model_name: m}\n"
    path.write_text(head + "deploy: {traffic: {share: 0.1, mask_patterns: ['[0-9]+']}}\n")
    assert load_config(path).deploy.traffic.share == 0.1
    for bad, field in (("{share: 0}", "share"), ("{mask_patterns: ['(']}", "mask_patterns"),
                       ("{share: 0.5, keep: all}", "keep")):
        path.write_text(head + f"deploy: {{traffic: {bad}}}\n")
        with pytest.raises(ConfigError, match=rf"deploy\.relay\.traffic\.{field}"):
            load_config(path)


def test_a_record_that_cannot_be_made_is_counted_and_the_answer_still_arrives(routed):
    """A route state no config check wrote (a mask pattern that is no regular expression): the client's answer
    arrives whole; the failure is counted, nothing recorded."""
    router.switch(routed.state_path, routed.production, "9", traffic={"share": 1.0, "mask_patterns": ["("]})
    reply = routed.post("/v1/completions", headers=AUTH, json={"prompt": "x"})
    assert reply.status_code == 200 and reply.json()["who"] == "production"
    status = routed.get("/router/status", headers=AUTH).json()
    assert status["traffic"] == {"unrecorded": 1} and status["shadow"] == {}
