"""The router's shadow canary (``tasks.servers.shadow``): exactly the configured share of live POSTs is copied to the
candidate after production answered; clients get production's answers only; each pair (request, both answers,
statuses, latencies) is appended to the canary's file, owner-only, secrets masked; a candidate that fails or cannot
be reached fails only its pair; copies beyond the bound are skipped and counted; stopping the mirror stops it."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from tasks import masking
from tasks.servers import router, shadow
from tests.support.asgi import KEY, app_answering, served

AUTH = {"Authorization": f"Bearer {KEY}"}


def test_exactly_the_share_is_sampled_evenly():
    assert [shadow.sampled(n, 0.25) for n in range(8)] == [False, False, False, True] * 2
    assert sum(shadow.sampled(n, 0.1) for n in range(1000)) == 100
    assert all(shadow.sampled(n, 1.0) for n in range(10))
    assert not any(shadow.sampled(n, 0.0) for n in range(10))


@pytest.fixture()
def routed(tmp_path):
    """A router in front of a live production endpoint (TestClient), its state at ``client.state_path``."""
    from starlette.testclient import TestClient

    state = tmp_path / "m@production.json"
    router.write_state(state, {"model": "m@production", "port": 1})
    with served(app_answering("production")) as production, TestClient(router.create_app(state, KEY)) as c:
        router.switch(state, production, "1")
        c.state_path = state
        yield c


def pairs_in(path: Path, n: int, timeout_s: float = 20) -> list[dict]:
    """The pairs in ``path`` once there are ``n`` (the copies run after the answers: waited for, bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def test_a_share_of_live_requests_is_copied_to_the_candidate_and_each_pair_kept(routed, tmp_path):
    seen: list[dict] = []
    pairs = tmp_path / "canary" / "pairs.jsonl"
    pairs.parent.mkdir()
    secret = "sk-shadow-" + "x" * 24
    masking.register_secret(secret)
    with served(app_answering("candidate", seen)) as candidate:
        router.mirror_to(routed.state_path, {"target": candidate, "adapter": "m-run2", "version": "2",
                                             "share": 0.5, "pairs": str(pairs), "max_pairs": 3})
        answers = [routed.post("/v1/completions", headers=AUTH, json={"prompt": f"p{i} {secret}"}).json()
                   for i in range(10)]
        assert routed.get("/v1/models", headers=AUTH).json()["who"] == "production"  # a GET is not copied
        kept = pairs_in(pairs, 3)
    assert {a["who"] for a in answers} == {"production"}  # clients never see the candidate's answer
    assert len(kept) == 3 and len(seen) == 3  # half of ten, but no more than max_pairs
    assert [s["model"] for s in seen] == ["m-run2"] * 3  # the candidate's adapter named in each copy
    for pair in kept:
        assert (pair["path"], pair["version"], pair["production"]["status"], pair["candidate"]["status"]) == \
            ("/v1/completions", "2", 200, 200)
        assert json.loads(pair["production"]["body"])["who"] == "production"
        assert json.loads(pair["candidate"]["body"])["who"] == "candidate"
        assert pair["production"]["latency_s"] > 0 and pair["candidate"]["latency_s"] > 0
        assert secret not in json.dumps(pair) and masking.MASK in pair["request"]
    assert sorted(json.loads(p["request"])["prompt"].split()[0] for p in kept) == ["p1", "p3", "p5"]
    assert stat.S_IMODE(pairs.stat().st_mode) == 0o600
    assert routed.get("/router/status", headers=AUTH).json()["shadow"] == {"mirrored": 3}
    router.mirror_to(routed.state_path, None)  # stopped: nothing more is copied
    routed.post("/v1/completions", headers=AUTH, json={"prompt": "after"})
    assert "shadow" not in router.read_state(routed.state_path) and len(pairs_in(pairs, 4, 1)) == 3


def test_a_failing_or_unreachable_candidate_fails_only_its_pair(routed, tmp_path, monkeypatch):
    from tasks import net

    pairs = tmp_path / "pairs.jsonl"
    with served(app_answering("candidate", status=500)) as candidate:
        router.mirror_to(routed.state_path, {"target": candidate, "version": "2", "share": 1.0, "pairs": str(pairs),
                                             "max_pairs": 10})
        assert routed.post("/v1/completions", headers=AUTH, json={"prompt": "a"}).status_code == 200
        assert [p["candidate"]["status"] for p in pairs_in(pairs, 1)] == [500]
    router.mirror_to(routed.state_path, {"target": f"http://127.0.0.1:{net.free_port()}", "version": "2",
                                         "share": 1.0, "pairs": str(pairs), "max_pairs": 10})
    assert routed.post("/v1/completions", headers=AUTH, json={"prompt": "b"}).json()["who"] == "production"
    gone = pairs_in(pairs, 2)[-1]["candidate"]
    assert gone["status"] == 0 and gone["error"].startswith("ConnectError")
    monkeypatch.setattr(shadow, "MAX_INFLIGHT", 0)  # no room for a copy: skipped and counted, never waited for
    assert routed.post("/v1/completions", headers=AUTH, json={"prompt": "c"}).json()["who"] == "production"
    assert routed.get("/router/status", headers=AUTH).json()["shadow"] == {"mirrored": 2, "skipped": 1}
    assert len(pairs_in(pairs, 3, 1)) == 2
