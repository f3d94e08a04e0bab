"""One stable URL per registered model, on the real stack: a promotion under continuous traffic loses no
request, a candidate that cannot serve changes nothing, a rollback restores the previous answers (its endpoint
started again from the registered model), and after ``down`` and ``up`` the same URL answers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import httpx
import pytest

from infra import stack as local_stack
from tasks import registry, storage, tracking
from tasks.deploy import RelayServer, endpoints, keys, rollout
from tasks.deploy.router import read_state
from tasks.settings import state_dir

from conftest import TINY_MODEL

MODEL = "fineflow-rollout-test"
PROMPT = {"prompt": "the", "max_tokens": 6}
STATE: dict = {}


def serve_version(name: str, model_dir, style: str, run_id: str) -> tuple[str, endpoints.Endpoint]:
    """What the deploy and register steps leave behind: an endpoint behind the key, and a version whose source
    is the model in S3, recording how to serve it again."""
    engine = RelayServer(name=MODEL, prompt_style=style)
    ep = endpoints.start(name, engine.with_api_key(engine.cmd(str(model_dir)), keys.api_key()), "relay",
                         str(model_dir), api_key_file=str(keys.key_path()))
    source = f"s3://fineflow/test-models/{name}"
    storage.upload_dir(model_dir, source)
    relaunch = {"deploy": {"backend": "relay", "host": "127.0.0.1", "port": 0, "api_key": True,
                           "formatter": "empty", "formatter_selector": None, "params": {}}, "prompt_style": style}
    version = registry.create_version(MODEL, source, run_id, {"endpoint_url": ep.url, "endpoint_name": ep.name,
                                                              "backend": "relay", "deploy_config": json.dumps(relaunch)})
    return version, ep


def answer(url: str, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=PROMPT, headers=keys.auth_headers(), timeout=60, **kw)


@pytest.fixture(scope="module")
def run_id(stack):
    run = tracking.start_run("fineflow-rollout-test", "rollout", tags={}, params={})
    yield run
    tracking.end_run(run, "FINISHED")


def test_promotion_under_traffic_loses_no_request(stack, run_id, chat_model, tmp_path_factory):
    v1, ep1 = serve_version("rollout-v1", TINY_MODEL, "alpaca", run_id)
    first = rollout.promote(MODEL, "production", v1, ep1, log=print)
    url = first.url
    expected_v1 = answer(ep1.url).json()["choices"][0]["text"]
    assert answer(url).json()["choices"][0]["text"] == expected_v1 and first.previous_version is None
    v2, ep2 = serve_version("rollout-v2", chat_model, "chat_template", run_id)
    expected_v2 = answer(ep2.url).json()["choices"][0]["text"]
    assert expected_v2 != expected_v1  # the two versions can be told apart by their answers

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
    done = rollout.promote(MODEL, "production", v2, ep2, log=print)
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert done.url == url and done.previous_version == v1
    assert len(results) > 10 and all(status == 200 for status, _ in results), results
    texts = [text for _, text in results]
    assert set(texts) == {expected_v1, expected_v2} and texts[-1] == expected_v2
    assert not ep1.alive() and endpoints.get("rollout-v1") is None  # stopped after the switch
    assert registry.alias_version(MODEL, "production") == v2
    assert registry.version_tags(MODEL, v2)["previous_version"] == v1
    assert tracking.client().get_registered_model(MODEL).tags["url_production"] == url
    STATE.update(url=url, v1=v1, v2=v2, expected_v1=expected_v1, expected_v2=expected_v2)


def test_a_candidate_that_cannot_serve_changes_nothing(stack, run_id):
    assert STATE, "needs the promotion test"
    v3, ep3 = serve_version("rollout-v3", TINY_MODEL, "alpaca", run_id)
    endpoints.stop_process(ep3.pid)  # it died after registering
    router_before = read_state(rollout.router_state_path(MODEL, "production"))
    with pytest.raises(RuntimeError, match="is not healthy: version .* is not promoted"):
        rollout.promote(MODEL, "production", v3, ep3, log=print)
    assert registry.alias_version(MODEL, "production") == STATE["v2"]
    assert read_state(rollout.router_state_path(MODEL, "production")) == router_before
    assert answer(STATE["url"]).json()["choices"][0]["text"] == STATE["expected_v2"]
    endpoints.stop("rollout-v3")


def test_rollback_restores_the_previous_answers_from_the_registry(stack):
    assert STATE, "needs the promotion test"
    shutil.rmtree(state_dir() / "models", ignore_errors=True)  # nothing of v1 left on this machine but the log
    proc = subprocess.run([sys.executable, "-m", "infra.rollout", "rollback", MODEL], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{MODEL}@production -> version {STATE['v1']} at {STATE['url']}" in proc.stdout
    assert "downloading" in proc.stdout and "starting" in proc.stdout  # v1's endpoint was gone: served again
    assert registry.alias_version(MODEL, "production") == STATE["v1"]
    assert registry.version_tags(MODEL, STATE["v2"])["status"] == "rolled_back"
    assert answer(STATE["url"]).json()["choices"][0]["text"] == STATE["expected_v1"]
    assert endpoints.get("rollout-v2") is None  # the rolled-back version's endpoint is stopped
    again = subprocess.run([sys.executable, "-m", "infra.rollout", "rollback", MODEL], capture_output=True,
                           text=True, timeout=120)
    assert again.returncode != 0 and "replaced no earlier version" in again.stderr
    assert registry.alias_version(MODEL, "production") == STATE["v1"]


def test_down_and_up_bring_back_the_same_url(stack):
    assert STATE, "needs the promotion test"
    local_stack.down()
    with pytest.raises(httpx.HTTPError):
        answer(STATE["url"])
    local_stack.up("free")
    assert answer(STATE["url"]).json()["choices"][0]["text"] == STATE["expected_v1"]
    status = subprocess.run([sys.executable, "-m", "infra.rollout", "status"], capture_output=True, text=True,
                            timeout=120).stdout
    assert f"{MODEL}@production\tversion {STATE['v1']}\t{STATE['url']}\trouter up" in status
