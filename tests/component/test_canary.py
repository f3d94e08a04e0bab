"""The shadow canary on real processes (``tasks.serving.canary``): production (the tiny model) behind its
model@alias router, clients sending requests through it; a candidate that answers differently (a LoRA adapter on
another server) is held back by the agreement check with the reason, one that answers as production passes; every
client answer during either canary is production's; with too few requests in the wait the verdict says so; the
mirror is off afterwards."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tasks.deploy import RelayServer
from tasks.models.local import revision_of
from tasks.servers.router import read_state
from tasks.servers.shadow import read_pairs
from tasks.services import keys
from tasks.serving import adapter_endpoints, canary, endpoints, platforms
from tasks.serving.platforms.local import router_state_path
from tests.support.lora import random_adapter
from tests.support.paths import TINY_MODEL

MODEL, ALIAS = "canary-model", "production"
PROMPTS = ["the", "a cat", "once upon", "in the", "she said", "it was", "we went", "one day"]


def start(name: str, adapters_root: str | None = None) -> endpoints.Endpoint:
    engine = RelayServer(name="tiny")
    if adapters_root:
        engine.with_adapters(2, revision_of(TINY_MODEL), adapters_root)
    return endpoints.start(name, engine.with_api_key(engine.cmd(str(TINY_MODEL)), keys.api_key()), "relay",
                           str(TINY_MODEL), api_key_file=str(keys.key_path()))


@pytest.fixture(scope="module")
def served(fineflow_home):
    """Production behind its route; a candidate server with the base and a random adapter ``bad``."""
    root = adapter_endpoints.root()
    bad = random_adapter(root / "canary-bad", 11, {"base_model_revision": revision_of(TINY_MODEL)}, str(TINY_MODEL))
    production, candidate = start("canary-production"), start("canary-candidate", str(root))
    local = platforms.platform(None)
    url = local.route(MODEL, ALIAS, production)
    local.switch(MODEL, ALIAS, production, "1")
    bad_ep = adapter_endpoints.load(candidate, "bad", str(bad), None)
    direct = {p: complete(production.url, p) for p in PROMPTS}  # production's own answers
    yield {"url": url, "production": production, "good": candidate, "bad": bad_ep, "direct": direct}
    for name in ("canary-production", "canary-candidate", f"router-{MODEL}-{ALIAS}"):
        endpoints.stop(name)


def complete(url: str, prompt: str, model: str = "tiny") -> str:
    r = httpx.post(f"{url}/v1/completions", headers=keys.auth_headers(), timeout=120,
                   json={"model": model, "prompt": prompt, "max_tokens": 6})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def canary_under_traffic(served, candidate, cfg: canary.CanaryConfig) -> tuple[canary.Verdict, list[tuple]]:
    """Clients send the prompts through the route (bounded: 90 s) while the canary runs; what they got."""
    got, stop = [], threading.Event()

    def client() -> None:
        deadline, i = time.monotonic() + 90, 0
        while not stop.is_set() and time.monotonic() < deadline:
            prompt = PROMPTS[i % len(PROMPTS)]
            got.append((prompt, complete(served["url"], prompt)))
            i += 1

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        verdict = canary.run(MODEL, ALIAS, candidate, cfg, log=print)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    return verdict, got


def test_a_candidate_that_answers_live_requests_differently_is_held_back(served):
    assert complete(served["url"], "the") != complete(served["bad"].url, "the", model="bad")  # the check can fail
    cfg = canary.CanaryConfig(share=0.5, min_requests=6, max_wait_s=60, min_agreement=0.9,
                              max_p95_latency_ratio=10)
    verdict, got = canary_under_traffic(served, served["bad"], cfg)
    assert verdict.passed is False and "agreement with production under 90%" in verdict.reason, verdict
    assert verdict.figures["canary_requests"] == 6 and verdict.figures["canary_agreement"] < 0.9
    assert got and all(answer == served["direct"][prompt] for prompt, answer in got)  # production's, every one
    pairs = read_pairs(canary.pairs_path(MODEL, served["bad"].name))
    assert len(pairs) == 6 and {p["version"] for p in pairs} == {"bad"}
    assert "shadow" not in read_state(router_state_path(MODEL, ALIAS))  # the mirror is off again


def test_a_candidate_that_answers_as_production_passes(served):
    cfg = canary.CanaryConfig(share=0.5, min_requests=6, max_wait_s=60, min_agreement=0.9,
                              max_p95_latency_ratio=10)
    verdict, got = canary_under_traffic(served, served["good"], cfg)
    assert verdict.passed is True and verdict.figures["canary_agreement"] == 1.0, verdict
    assert verdict.figures["canary_candidate_error_rate"] == 0 and all(a == served["direct"][p] for p, a in got)
    assert verdict.tags()["canary"].startswith("passed: 6 mirrored requests")


def test_too_few_requests_in_the_wait_are_said_as_such(served):
    verdict = canary.run(MODEL, ALIAS, served["good"], canary.CanaryConfig(min_requests=3, max_wait_s=2))
    assert verdict.passed is None and verdict.reason == "0 of 3 mirrored requests"
    assert "shadow" not in read_state(router_state_path(MODEL, ALIAS))
