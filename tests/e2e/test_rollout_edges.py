"""The promotion rules test_rollout.py does not reach, on the real stack and real endpoints: a guard that refuses
moves nothing, a restore limited to some models serves them again at the same URL and skips a version that
cannot be served again, a restore starts independent versions side by side and what shares something in order,
a registered model is downloaded once, a rollback serves the replaced version again, and one with nothing to go
back to says so; a version recorded on Ray is served again there or not at all, and one recorded as an adapter
whose files are a whole model is refused. Each test asks its fixtures for the state it needs, so that it runs
alone or in any order (the mutation bench runs a mutant's tests fastest first)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from urllib.parse import urlparse

import pytest

from tasks import launchers, net
from tasks.servers.router import read_state
from tasks.services import registry, tracking
from tasks.serving import endpoints, rollout
from tasks.serving.platforms.local import router_name, router_state_path
from tasks.settings import state_dir
from tests.support.paths import TINY_MODEL
from tests.support.versions import SessionNames, answer, serve_version, session_names


@pytest.fixture(scope="module")
def names() -> SessionNames:
    return session_names("rollout-edges")


@pytest.fixture(scope="module")
def production(stack, names) -> dict:
    """v1 of the model promoted to production behind its router."""
    run = tracking.start_run("fineflow-rollout-edges", "rollout", tags={}, params={})
    v1, ep1 = serve_version(names.model, names.endpoint("v1"), TINY_MODEL, "alpaca", run)
    done = rollout.promote(names.model, "production", v1, ep1, log=print)
    yield {"run": run, "v1": v1, "url": done.url, "text": answer(done.url).json()["choices"][0]["text"]}
    for name in (*map(names.endpoint, ("v1", "v2", "v3", "restore", "bare")), router_name(names.model, "production"),
                 router_name(names.bare, "production")):
        endpoints.stop(name)
    tracking.end_run(run, "FINISHED")


@pytest.fixture(scope="module")
def bare(names, production) -> str:
    """The version of a second model in production: it replaced nothing, and records no deploy_config (it cannot
    be served again)."""
    version, ep = serve_version(names.bare, names.endpoint("bare"), TINY_MODEL, "alpaca", production["run"],
                                deploy_config=False)
    rollout.promote(names.bare, "production", version, ep, log=print)
    return version


def test_a_guard_that_refuses_moves_nothing_and_one_that_agrees_promotes(names, production):
    before = registry.alias_version(names.model, "production")  # v1, or what another test promoted
    replaced = rollout.serving_endpoint(names.model, before, log=print).name  # running, or started again
    v2, ep2 = serve_version(names.model, names.endpoint("v2"), TINY_MODEL, "alpaca", production["run"])
    router_before, seen = read_state(router_state_path(names.model, "production")), []
    with pytest.raises(rollout.Superseded, match=f"^version {before} holds production$"):
        rollout.promote(names.model, "production", v2, ep2, log=print,
                        guard=lambda current: seen.append(current) or f"version {current} holds production")
    assert seen == [before] and registry.alias_version(names.model, "production") == before
    assert read_state(router_state_path(names.model, "production")) == router_before
    assert endpoints.get(replaced).alive()
    assert "previous_version" not in registry.version_tags(names.model, v2)
    lines: list[str] = []
    done = rollout.promote(names.model, "production", v2, ep2, log=lines.append, guard=lambda current: None)
    assert (done.version, done.previous_version, done.url) == (v2, before, production["url"])
    assert registry.alias_version(names.model, "production") == v2
    assert read_state(router_state_path(names.model, "production"))["version"] == v2
    assert registry.version_tags(names.model, v2)["previous_version"] == before
    assert endpoints.get(replaced) is None
    assert f"stopped replaced endpoint {replaced} (version {before})" in lines
    assert answer(production["url"]).json()["choices"][0]["text"] == production["text"]  # the same tiny model


def test_restore_of_some_models_serves_them_at_the_same_url_and_skips_what_cannot_be_served(names, production, bare):
    """After a machine restart (nothing runs, the records are left) with another program on the port production's
    version had: it is served again from its recorded model folder (nothing downloaded) on another port, behind
    the same URL, its record keeping how to serve it again. The version is one of its own, served from the
    embedded model's folder: a version another test served again runs from its download folder, where a download
    would change nothing."""
    current, ep = serve_version(names.model, names.endpoint("restore"), TINY_MODEL, "alpaca", production["run"])
    rollout.promote(names.model, "production", current, ep, log=print)
    tags = registry.version_tags(names.model, current)
    registry.move_alias(names.model, "staging", current)  # two aliases, one version: restored in order, one endpoint
    for name in (*map(names.endpoint, ("v1", "v2", "v3", "restore", "bare")), router_name(names.model, "production"),
                 router_name(names.bare, "production")):
        if ep := endpoints.get(name):
            launchers.stop_group(ep.pid)
    lines: list[str] = []
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the killed server's closing connections
    try:
        taken.bind(("127.0.0.1", urlparse(tags["endpoint_url"]).port))
        taken.listen()
        done = rollout.restore([names.model, names.bare], log=lines.append)
        served = endpoints.get(tags["endpoint_name"])
        assert served.relaunch == json.loads(tags["deploy_config"]) and served.url != tags["endpoint_url"]
        assert served.model_path == str(TINY_MODEL)
        assert not [line for line in lines if line.startswith("downloading")], lines
        assert not (state_dir() / "models" / names.model / current).exists()
        assert [(p.model, p.alias, p.version) for p in done] == [(names.model, "production", current),
                                                                 (names.model, "staging", current)]
        assert done[0].url == production["url"] and done[1].url != production["url"]
        assert answer(production["url"]).json()["choices"][0]["text"] == production["text"]
        assert answer(done[1].url).json()["choices"][0]["text"] == production["text"]
        assert sum(line.startswith(f"starting {names.model} version {current} ") for line in lines) == 1, lines
        assert [read_state(router_state_path(names.model, alias))["version"] for alias in ("production", "staging")] \
            == [current, current]  # each router says which version it serves
    finally:
        taken.close()
        registry.client().delete_registered_model_alias(names.model, "staging")
        endpoints.stop(router_name(names.model, "staging"))
    assert f"{names.bare}@production: version {bare} could not be served again: {names.bare} version {bare} " \
           "records no deploy_config: it cannot be served again" in lines
    assert f"{names.model}@production: version {current} serving at {production['url']}" in lines
    assert rollout.restore(["no-such-model"], log=lines.append) == []


def test_a_switch_that_fails_moves_the_alias_back_and_says_why(names, production, monkeypatch):
    """The route's switch failing (its state file cannot be written, say: made to raise here) after the alias
    moved: the alias goes back to the version it held, the router is untouched, and the switch's error is the
    promotion's."""
    from tasks.serving.platforms.local import LocalPlatform

    before = registry.alias_version(names.model, "production")
    ep = rollout.serving_endpoint(names.model, before, log=print)  # running, or started again
    tags = {k: v for k, v in registry.version_tags(names.model, before).items()
            if k not in ("previous_version", "status")}  # the same files and endpoint, a new version
    candidate = registry.create_version(names.model, registry.files_uri(names.model, before), production["run"], tags)
    router_before = read_state(router_state_path(names.model, "production"))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LocalPlatform, "switch", full)
    with pytest.raises(OSError, match="No space left on device"):
        rollout.promote(names.model, "production", candidate, ep, log=print)
    assert registry.alias_version(names.model, "production") == before
    assert read_state(router_state_path(names.model, "production")) == router_before
    assert "previous_version" not in registry.version_tags(names.model, candidate)


def test_a_promotion_waits_for_the_models_slot_and_says_so(names, production):
    """Another promotion of the model holds its slot (on the Prefect server): this one waits, says so in its own
    log, and goes on once the slot is free."""
    from tasks.services import coordination

    current = registry.alias_version(names.model, "production")
    ep = rollout.serving_endpoint(names.model, current, log=print)
    lines: list[str] = []
    with coordination.slot("promote", names.model):
        waiting = threading.Thread(target=lambda: rollout.promote(names.model, "production", current, ep,
                                                                  log=lines.append))
        waiting.start()
        time.sleep(coordination.FIRST_TRY_S + 2)
        assert waiting.is_alive() and registry.alias_version(names.model, "production") == current
    waiting.join(timeout=120)
    assert not waiting.is_alive()
    assert any("promote slot of" in line and "held by another run; waiting for it" in line for line in lines), lines
    assert any(line.startswith(f"moved alias production -> version {current} of {names.model}") for line in lines)


def test_a_registered_model_is_downloaded_once(names, production):
    target = state_dir() / "models" / names.model / production["v1"]
    shutil.rmtree(target, ignore_errors=True)  # a test run before may have served v1 again from a download
    lines: list[str] = []
    assert rollout.download_version(names.model, production["v1"], log=lines.append) == str(target)
    assert (target / "config.json").is_file() and len(lines) == 1 and lines[0].startswith("downloading ")
    assert rollout.download_version(names.model, production["v1"], log=lines.append) == str(target) and len(lines) == 1


def test_a_rollback_with_nothing_to_go_back_to_says_why(names, bare):
    with pytest.raises(ValueError,
                       match=f"^{names.bare} version .* replaced no earlier version: nothing to roll back to$"):
        rollout.rollback(names.bare)
    with pytest.raises(ValueError, match=f"^{names.model} has no staging version to roll back$"):
        rollout.rollback(names.model, "staging")


def test_a_rollback_serves_the_replaced_version_again_behind_the_same_url(names, production):
    """v3 promoted over what holds production stops the replaced version's endpoint; a rollback starts that version
    again from its registered record, moves the alias back without recording v3 as what it replaced, tags v3
    rolled back and stops v3's endpoint; the URL answers as before."""
    before = registry.alias_version(names.model, "production")  # v1, or v2 after the guard's promotion
    replaced, recorded = (registry.version_tags(names.model, before).get(tag) for tag in ("endpoint_name",
                                                                                          "previous_version"))
    v3, ep3 = serve_version(names.model, names.endpoint("v3"), TINY_MODEL, "alpaca", production["run"])
    rollout.promote(names.model, "production", v3, ep3, log=print)
    assert endpoints.get(replaced) is None and registry.version_tags(names.model, v3)["previous_version"] == before
    lines: list[str] = []
    done = rollout.rollback(names.model, log=lines.append)
    assert (done.model, done.alias, done.version, done.previous_version, done.url) == \
        (names.model, "production", before, v3, production["url"])
    assert registry.alias_version(names.model, "production") == before
    tags = {v: registry.version_tags(names.model, v) for v in (before, v3)}
    assert tags[v3]["status"] == "rolled_back" and "status" not in tags[before]
    assert tags[before].get("previous_version") == recorded  # a rollback replaces nothing: no record of v3
    assert any(line.startswith(f"starting {names.model} version {before} ") for line in lines), lines
    assert endpoints.get(replaced).alive() and endpoints.get(names.endpoint("v3")) is None
    assert f"stopped replaced endpoint {names.endpoint('v3')} (version {v3})" in lines
    assert answer(production["url"]).json()["choices"][0]["text"] == production["text"]


def test_a_version_recorded_on_ray_is_served_again_there_or_not_at_all(names, production):
    """A version whose record names a Ray cluster is served again on that cluster: one that does not answer is the
    error, and nothing is started on this machine in its place."""
    from tasks.serving.platforms.ray import RayServeError

    port = net.free_ports(1)[0]  # nothing listens there
    record = json.loads(registry.version_tags(names.model, production["v1"])["deploy_config"])
    record["deploy"]["serving"] = {"platform": "ray", "address": f"127.0.0.1:{port}"}
    version = registry.create_version(names.model, registry.files_uri(names.model, production["v1"]),
                                      production["run"], {"deploy_config": json.dumps(record),
                                                          "endpoint_name": names.endpoint("ray")})
    lines: list[str] = []
    with pytest.raises(RayServeError, match=f"^Ray Serve status on 127.0.0.1:{port}: the Ray head does not answer"):
        rollout.serving_endpoint(names.model, version, log=lines.append)
    assert lines == [] and endpoints.get(names.endpoint("ray")) is None


def test_an_adapter_version_whose_files_are_no_adapter_is_refused_naming_what_is_missing(names, production):
    """A version recorded as an adapter (``deploy.serve: adapter``) whose registered files are a whole model: served
    again, its files are fetched into the adapters' folder under its own version, and it is refused there before
    any base is started or anything loaded."""
    from tasks.serving import adapter_endpoints, adapters

    record = json.loads(registry.version_tags(names.model, production["v1"])["deploy_config"])
    record["deploy"]["serve"] = "adapter"
    version = registry.create_version(names.model, registry.files_uri(names.model, production["v1"]),
                                      production["run"], {"deploy_config": json.dumps(record),
                                                          "endpoint_name": names.endpoint("adapter")})
    folder = adapter_endpoints.root() / "files" / names.model / version
    lines: list[str] = []
    with pytest.raises(adapters.BaseMismatch, match=f"^{folder} records no base model"):
        rollout.serving_endpoint(names.model, version, log=lines.append)
    assert (folder / "config.json").is_file()  # the registered files, fetched under this version
    assert lines == [f"downloading {names.model} version {version}'s adapter from "
                     f"{registry.files_uri(names.model, version)} ..."]
    assert not [ep for ep in endpoints.list_endpoints() if ep.name.startswith(f"base-{names.model}")]


LOCAL = {"deploy": {"backend": "builtin"}, "prompt_style": "alpaca"}
ADAPTER = {"deploy": {"backend": "builtin", "serve": "adapter"}, "prompt_style": "alpaca"}
RAY = {"deploy": {"backend": "builtin", "serving": {"platform": "ray", "address": "10.0.0.1:6379"}},
       "prompt_style": "alpaca"}
RAY_ADAPTER = {"deploy": {**RAY["deploy"], "serve": "adapter"}, "prompt_style": "alpaca"}


def test_restore_starts_groups_side_by_side_and_what_shares_something_in_order(names, production, monkeypatch):
    """Versions registered in the real registry, each recording how it is served: a model's aliases, adapter
    versions, and every version on Ray (one Serve deployment at a time) are groups started in order; the groups
    run at once. The starts themselves are observed here (the test above serves real versions again)."""
    made = {name: f"fineflow-restore-order-{names.tag}-{name}" for name in "abcdefgh"}
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

        threads: set[str] = set()

        def restore_alias(model, alias, version, log=print):
            spans[(model, alias)] = [time.monotonic()]
            threads.add(threading.current_thread().name)
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
        assert len(threads) > 1 and all(t.startswith("restore_") for t in threads), threads  # named in a dump
    finally:
        for name in made.values():
            with contextlib.suppress(Exception):  # one not made: nothing to delete
                registry.client().delete_registered_model(name)
