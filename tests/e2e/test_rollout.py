"""One stable URL per registered model, on the real stack: a promotion under continuous traffic loses no
request, a candidate that cannot serve changes nothing, a rollback restores the previous answers (its endpoint
started again from the registered model), and after ``down`` and ``up`` the same URL answers. The promotion and
the rollback are module fixtures (``promoted``, ``rolled_back``): a test asks for the state it checks, so that it
runs alone or in any order (the mutation bench runs a mutant's tests fastest first), the last one excepted."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import httpx
import pytest

from infra import stack as local_stack
from tasks import launchers
from tasks.files import slug
from tasks.servers.router import read_state
from tasks.services import keys, registry, tracking
from tasks.serving import endpoints, rollout
from tasks.serving.platforms.local import router_name, router_state_path
from tasks.settings import state_dir
from tests.support.paths import TINY_MODEL
from tests.support.versions import PROMPT, SessionNames, answer, serve_version, session_names


@pytest.fixture(scope="module")
def names() -> SessionNames:
    return session_names("rollout")


@pytest.fixture(scope="module")
def run_id(stack, names):
    run = tracking.start_run("fineflow-rollout-test", "rollout", tags={}, params={})
    yield run
    for name in (*map(names.endpoint, ("v1", "v2", "v3")), router_name(names.model, "production")):
        endpoints.stop(name)
    tracking.end_run(run, "FINISHED")


@pytest.fixture(scope="module")
def promoted(names, stack, run_id, chat_model) -> dict:
    """v1 promoted behind the model's URL, then v2 promoted under continuous traffic: what the traffic got."""
    v1, ep1 = serve_version(names.model, names.endpoint("v1"), TINY_MODEL, "alpaca", run_id)
    first = rollout.promote(names.model, "production", v1, ep1, log=print)
    expected_v1 = answer(ep1.url).json()["choices"][0]["text"]
    v2, ep2 = serve_version(names.model, names.endpoint("v2"), chat_model, "chat_template", run_id)
    expected_v2 = answer(ep2.url).json()["choices"][0]["text"]
    url, at_v1 = first.url, answer(first.url).json()["choices"][0]["text"]
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(headers=keys.auth_headers(), timeout=60) as c:
            while not stop.is_set():
                r = c.post(f"{url}/v1/completions", json=PROMPT)
                results.append((r.status_code, r.json()["choices"][0]["text"] if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    done = rollout.promote(names.model, "production", v2, ep2, log=print)
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    # What the promotion left, read now: a test may run after the rollback, which serves v1 again.
    v1_after = {"alive": ep1.alive(), "record": endpoints.get(names.endpoint("v1"))}
    return {"url": url, "v1": v1, "v2": v2, "v1_after": v1_after, "first": first, "done": done, "results": results,
            "at_v1": at_v1, "expected_v1": expected_v1, "expected_v2": expected_v2}


@pytest.fixture(scope="module")
def rolled_back(names, promoted) -> dict:
    """``python -m infra.rollout rollback`` after the promotion, with nothing of v1 left on this machine, and a
    second rollback, which has nothing to go back to."""
    shutil.rmtree(state_dir() / "models" / slug(names.model), ignore_errors=True)  # nothing of v1 on this machine
    rollback = [sys.executable, "-m", "infra.rollout", "rollback", names.model]
    first = subprocess.run(rollback, capture_output=True, text=True, timeout=300)
    answered = answer(promoted["url"]).json()["choices"][0]["text"] if first.returncode == 0 else None
    return {"first": first, "answered": answered,
            "second": subprocess.run(rollback, capture_output=True, text=True, timeout=120)}


def test_promotion_under_traffic_loses_no_request(names, promoted):
    p = promoted
    assert p["at_v1"] == p["expected_v1"] and p["first"].previous_version is None
    assert p["expected_v2"] != p["expected_v1"]  # the two versions can be told apart by their answers
    assert p["done"].url == p["url"] and p["done"].previous_version == p["v1"]
    results = p["results"]
    assert len(results) > 10 and all(status == 200 for status, _ in results), results
    texts = [text for _, text in results]
    assert set(texts) == {p["expected_v1"], p["expected_v2"]} and texts[-1] == p["expected_v2"]
    assert p["v1_after"] == {"alive": False, "record": None}  # stopped after the switch
    assert registry.version_tags(names.model, p["v2"])["previous_version"] == p["v1"]
    assert tracking.client().get_registered_model(names.model).tags["url_production"] == p["url"]


def test_a_candidate_that_cannot_serve_changes_nothing(names, promoted, run_id):
    production = registry.alias_version(names.model, "production")
    before = answer(promoted["url"]).json()["choices"][0]["text"]
    v3, ep3 = serve_version(names.model, names.endpoint("v3"), TINY_MODEL, "alpaca", run_id)
    launchers.stop_group(ep3.pid)  # it died after registering
    router_before = read_state(router_state_path(names.model, "production"))
    with pytest.raises(rollout.Unhealthy, match="is not healthy: version .* is not promoted"):
        rollout.promote(names.model, "production", v3, ep3, log=print)
    assert registry.alias_version(names.model, "production") == production
    assert read_state(router_state_path(names.model, "production")) == router_before
    assert answer(promoted["url"]).json()["choices"][0]["text"] == before
    endpoints.stop(names.endpoint("v3"))


def test_rollback_restores_the_previous_answers_from_the_registry(names, promoted, rolled_back):
    proc, p = rolled_back["first"], promoted
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{names.model}@production -> version {p['v1']} at {p['url']}" in proc.stdout
    assert "downloading" in proc.stdout and "starting" in proc.stdout  # v1's endpoint was gone: served again
    assert registry.version_tags(names.model, p["v2"])["status"] == "rolled_back"
    assert rolled_back["answered"] == p["expected_v1"]
    assert endpoints.get(names.endpoint("v2")) is None  # the rolled-back version's endpoint is stopped
    again = rolled_back["second"]
    assert again.returncode != 0 and "replaced no earlier version" in again.stderr
    assert registry.alias_version(names.model, "production") == p["v1"]


def test_down_and_up_bring_back_the_same_url(names, promoted):
    url, production = promoted["url"], registry.alias_version(names.model, "production")
    before = answer(url).json()["choices"][0]["text"]
    running = endpoints.list_endpoints()
    local_stack.down()  # every endpoint and router stopped (side by side), none left behind
    assert len(running) > 1 and endpoints.list_endpoints() == []
    assert not [ep.name for ep in running if ep.pid > 0 and launchers.group_alive(ep.pid)]
    with pytest.raises(httpx.HTTPError):
        answer(url)
    local_stack.up("free")
    assert answer(url).json()["choices"][0]["text"] == before
    status = subprocess.run([sys.executable, "-m", "infra.rollout", "status", names.model], capture_output=True,
                            text=True, timeout=120).stdout
    assert f"{names.model}@production\tversion {production}\t{url}\trouter up" in status
