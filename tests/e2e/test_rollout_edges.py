"""The promotion rules test_rollout.py does not reach, on the real stack and real endpoints: a guard that refuses
moves nothing, a restore limited to some models serves them again at the same URL and skips a version that
cannot be served again, a restore starts independent versions side by side and what shares something in order,
a registered model is downloaded once, and a rollback with nothing to go back to says so."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid

import pytest

from tasks.servers.router import read_state
from tasks.services import registry, tracking
from tasks.serving import endpoints, rollout
from tasks.serving.platforms.local import router_name, router_state_path
from tasks.settings import state_dir
from tests.support.paths import TINY_MODEL
from tests.support.versions import answer, serve_version

# Names of this session only: the tests run again on one stack (the mutation bench's) find nothing of a run before.
RUN = uuid.uuid4().hex[:6]
MODEL, BARE = f"fineflow-rollout-edges-{RUN}", f"fineflow-rollout-edges-{RUN}-bare"


@pytest.fixture(scope="module")
def production(stack) -> dict:
    """v1 of MODEL promoted to production behind its router."""
    run = tracking.start_run("fineflow-rollout-edges", "rollout", tags={}, params={})
    v1, ep1 = serve_version(MODEL, "edges-v1", TINY_MODEL, "alpaca", run)
    done = rollout.promote(MODEL, "production", v1, ep1, log=print)
    yield {"run": run, "v1": v1, "url": done.url, "text": answer(done.url).json()["choices"][0]["text"]}
    for name in ("edges-v1", "edges-v2", "edges-bare", router_name(MODEL, "production"),
                 router_name(BARE, "production")):
        endpoints.stop(name)
    tracking.end_run(run, "FINISHED")


def test_a_guard_that_refuses_moves_nothing_and_one_that_agrees_promotes(production):
    v1 = production["v1"]
    v2, ep2 = serve_version(MODEL, "edges-v2", TINY_MODEL, "alpaca", production["run"])
    router_before, seen = read_state(router_state_path(MODEL, "production")), []
    with pytest.raises(rollout.Superseded, match=f"^version {v1} holds production$"):
        rollout.promote(MODEL, "production", v2, ep2, log=print,
                        guard=lambda current: seen.append(current) or f"version {current} holds production")
    assert seen == [v1] and registry.alias_version(MODEL, "production") == v1
    assert read_state(router_state_path(MODEL, "production")) == router_before
    assert endpoints.get("edges-v1").alive() and "previous_version" not in registry.version_tags(MODEL, v2)
    lines: list[str] = []
    done = rollout.promote(MODEL, "production", v2, ep2, log=lines.append, guard=lambda current: None)
    assert (done.version, done.previous_version, done.url) == (v2, v1, production["url"])
    assert registry.alias_version(MODEL, "production") == v2
    assert registry.version_tags(MODEL, v2)["previous_version"] == v1
    assert endpoints.get("edges-v1") is None and f"stopped replaced endpoint edges-v1 (version {v1})" in lines
    assert answer(production["url"]).json()["choices"][0]["text"] == production["text"]  # the same tiny model


def test_restore_of_some_models_serves_them_at_the_same_url_and_skips_what_cannot_be_served(production):
    bare, ep = serve_version(BARE, "edges-bare", TINY_MODEL, "alpaca", production["run"], deploy_config=False)
    rollout.promote(BARE, "production", bare, ep, log=print)
    current = registry.alias_version(MODEL, "production")
    registry.move_alias(MODEL, "staging", current)  # two aliases, one version: restored in order, one endpoint
    for name in ("edges-v1", "edges-v2", "edges-bare", router_name(MODEL, "production"),
                 router_name(BARE, "production")):
        endpoints.stop(name)  # a machine restarted: nothing of either model runs
    lines: list[str] = []
    try:
        done = rollout.restore([MODEL, BARE], log=lines.append)
        assert [(p.model, p.alias, p.version) for p in done] == [(MODEL, "production", current),
                                                                 (MODEL, "staging", current)]
        assert done[0].url == production["url"] and done[1].url != production["url"]
        assert answer(production["url"]).json()["choices"][0]["text"] == production["text"]
        assert answer(done[1].url).json()["choices"][0]["text"] == production["text"]
        assert sum(line.startswith(f"starting {MODEL} version {current} ") for line in lines) == 1, lines
    finally:
        registry.client().delete_registered_model_alias(MODEL, "staging")
        endpoints.stop(router_name(MODEL, "staging"))
    assert f"{BARE}@production: version {bare} could not be served again: {BARE} version {bare} records no " \
           "deploy_config: it cannot be served again" in lines
    assert f"{MODEL}@production: version {current} serving at {production['url']}" in lines
    assert rollout.restore(["no-such-model"], log=lines.append) == []


def test_a_registered_model_is_downloaded_once(production):
    target = state_dir() / "models" / MODEL / production["v1"]
    lines: list[str] = []
    assert rollout.download_version(MODEL, production["v1"], log=lines.append) == str(target)
    assert (target / "config.json").is_file() and len(lines) == 1 and lines[0].startswith("downloading ")
    assert rollout.download_version(MODEL, production["v1"], log=lines.append) == str(target) and len(lines) == 1


def test_a_rollback_with_nothing_to_go_back_to_says_why(production):
    with pytest.raises(ValueError, match=f"^{BARE} version .* replaced no earlier version: nothing to roll back to$"):
        rollout.rollback(BARE)
    with pytest.raises(ValueError, match=f"^{MODEL} has no staging version to roll back$"):
        rollout.rollback(MODEL, "staging")


def test_a_rollback_serves_the_replaced_version_again_behind_the_same_url(production):
    """After the guard's promotion v2 holds production and v1's endpoint is gone: a rollback starts v1 again from
    its registered record, moves the alias back without recording v2 as what v1 replaced, tags v2 rolled back and
    stops its endpoint; the URL answers as before."""
    v1, v2 = production["v1"], registry.alias_version(MODEL, "production")
    assert v2 != v1 and registry.version_tags(MODEL, v2)["previous_version"] == v1
    assert endpoints.get("edges-v1") is None
    lines: list[str] = []
    done = rollout.rollback(MODEL, log=lines.append)
    assert (done.model, done.alias, done.version, done.previous_version, done.url) == \
        (MODEL, "production", v1, v2, production["url"])
    assert registry.alias_version(MODEL, "production") == v1
    tags = {v: registry.version_tags(MODEL, v) for v in (v1, v2)}
    assert tags[v2]["status"] == "rolled_back" and "status" not in tags[v1]
    assert "previous_version" not in tags[v1]  # a rollback is not a replacement: nothing to roll back to now
    assert any(line.startswith(f"starting {MODEL} version {v1} ") for line in lines), lines
    assert endpoints.get("edges-v1").alive() and endpoints.get("edges-v2") is None
    assert f"stopped replaced endpoint edges-v2 (version {v2})" in lines
    assert answer(production["url"]).json()["choices"][0]["text"] == production["text"]


LOCAL = {"deploy": {"backend": "builtin"}, "prompt_style": "alpaca"}
ADAPTER = {"deploy": {"backend": "builtin", "serve": "adapter"}, "prompt_style": "alpaca"}
RAY = {"deploy": {"backend": "builtin", "serving": {"platform": "ray", "address": "10.0.0.1:6379"}},
       "prompt_style": "alpaca"}
RAY_ADAPTER = {"deploy": {**RAY["deploy"], "serve": "adapter"}, "prompt_style": "alpaca"}


def test_restore_starts_groups_side_by_side_and_what_shares_something_in_order(production, monkeypatch):
    """Versions registered in the real registry, each recording how it is served: a model's aliases, adapter
    versions, and every version on Ray (one Serve deployment at a time) are groups started in order; the groups
    run at once. The starts themselves are observed here (the test above serves real versions again)."""
    made = {name: f"fineflow-restore-order-{name}" for name in "abcdefgh"}
    records = {"a": LOCAL, "b": LOCAL, "c": ADAPTER, "d": ADAPTER, "e": RAY, "f": RAY_ADAPTER, "g": None,
               "h": "{not json"}
    try:
        for name, record in records.items():
            tags = {} if record is None else {"deploy_config": record if isinstance(record, str) else
                                              json.dumps(record)}
            version = registry.create_version(made[name], "s3://fineflow/tests/restore-order", production["run"],
                                              tags)
            for alias in ("production", "staging") if name == "a" else ("production",):
                registry.move_alias(made[name], alias, version)
        groups = {name: rollout.restore_group(made[name], "1") for name in records}
        assert groups == {"a": ("model", made["a"]), "b": ("model", made["b"]), "c": ("adapters", ""),
                          "d": ("adapters", ""), "e": ("platform", "ray"), "f": ("platform", "ray"),
                          "g": ("model", made["g"]), "h": ("model", made["h"])}
        assert rollout.restore_group("fineflow-no-such-model", "1") == ("model", "fineflow-no-such-model")

        firsts = {(made["a"], "production"), (made["b"], "production"), (made["c"], "production")}
        together, spans = threading.Barrier(len(firsts), timeout=60), {}

        def restore_alias(model, alias, version, log=print):
            spans[(model, alias)] = [time.monotonic()]
            if (model, alias) in firsts:
                together.wait()  # broken (an error) unless these three groups run at once
            time.sleep(0.05)
            spans[(model, alias)].append(time.monotonic())
            return None if model == made["b"] else rollout.Promotion(model=model, alias=alias, version=version,
                                                                        previous_version=None, url=f"http://{model}")

        monkeypatch.setattr(rollout, "RESTORE_WORKERS", 4)
        monkeypatch.setattr(rollout, "restore_alias", restore_alias)
        done = rollout.restore([made[n] for n in "abcd"], log=print)
        # in the registry's order, without the one that could not be served again
        order = [(rm.name, alias) for rm in registry.client().search_registered_models()
                 if rm.name in (made["a"], made["c"], made["d"]) for alias in rm.aliases]
        assert [(p.model, p.alias) for p in done] == order and len(order) == 4
        for group in ((made["a"],), (made["c"], made["d"])):
            first, second = [entry for entry in order if entry[0] in group]
            assert spans[first][1] <= spans[second][0]  # one after the other
    finally:
        for name in made.values():
            with contextlib.suppress(Exception):  # one not made: nothing to delete
                registry.client().delete_registered_model(name)
