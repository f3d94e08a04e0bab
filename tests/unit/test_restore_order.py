"""``rollout.restore`` starts independent versions side by side and, in order, what shares something: a model's
aliases, every adapter version, every version on a platform that applies starts one at a time (Ray). The registry
is stood in for by its tags here; the e2e test_rollout_edges restores real versions from a real registry."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

from tasks.serving import rollout
from tasks.serving.rollout import Promotion

LOCAL = json.dumps({"deploy": {"backend": "builtin"}})
ADAPTER = json.dumps({"deploy": {"backend": "builtin", "serve": "adapter"}})
RAY = json.dumps({"deploy": {"backend": "builtin", "serving": {"platform": "ray", "address": "10.0.0.1:6379"}}})
TAGS = {("a", "1"): {"deploy_config": LOCAL}, ("b", "1"): {"deploy_config": LOCAL},
        ("c", "1"): {"deploy_config": ADAPTER}, ("d", "1"): {"deploy_config": ADAPTER},
        ("e", "1"): {"deploy_config": RAY}, ("f", "1"): {"deploy_config": RAY},
        ("g", "1"): {}, ("h", "1"): {"deploy_config": "{not json"},
        ("i", "1"): {"deploy_config": RAY.replace('"builtin"', '"builtin", "serve": "adapter"')}}


def test_versions_are_grouped_by_what_their_starts_share(monkeypatch):
    monkeypatch.setattr(rollout.registry, "version_tags", lambda model, version: TAGS[(model, version)])
    groups = {model: rollout.restore_group(model, "1") for model, _ in TAGS}
    assert rollout.restore_group("unreachable", "1") == ("model", "unreachable")  # the lookup failed (KeyError)
    assert groups == {"a": ("model", "a"), "b": ("model", "b"), "c": ("adapters", ""), "d": ("adapters", ""),
                      "e": ("platform", "ray"), "f": ("platform", "ray"), "g": ("model", "g"), "h": ("model", "h"),
                      "i": ("platform", "ray")}  # a Ray adapter version: on Ray, in order with the other Ray starts


def test_groups_start_side_by_side_and_a_group_in_order(monkeypatch):
    aliases = {"a": {"production": "1", "staging": "1"}, "b": {"production": "1"}, "c": {"production": "1"},
               "d": {"production": "1"}}
    models = [SimpleNamespace(name=name, aliases=held) for name, held in aliases.items()]
    monkeypatch.setattr(rollout.registry, "client", lambda: SimpleNamespace(search_registered_models=lambda: models))
    monkeypatch.setattr(rollout.registry, "version_tags", lambda model, version: TAGS[(model, version)])
    monkeypatch.setattr(rollout, "RESTORE_WORKERS", 4)
    firsts = {("a", "production"), ("b", "production"), ("c", "production")}  # each group's first start
    together, spans = threading.Barrier(len(firsts), timeout=30), {}

    def restore_alias(model, alias, version, log=print):
        spans[(model, alias)] = [time.monotonic()]
        if (model, alias) in firsts:
            together.wait()  # broken (an error) unless the three groups run at once
        time.sleep(0.05)
        spans[(model, alias)].append(time.monotonic())
        return None if model == "b" else Promotion(model=model, alias=alias, version=version,
                                                     previous_version=None, url=f"http://{model}/{alias}")

    monkeypatch.setattr(rollout, "restore_alias", restore_alias)
    done = rollout.restore(log=print)
    # in the registry's order, without the one that could not be served again
    assert [(p.model, p.alias) for p in done] == [("a", "production"), ("a", "staging"), ("c", "production"),
                                                  ("d", "production")]
    for first, second in ((("a", "production"), ("a", "staging")), (("c", "production"), ("d", "production"))):
        assert spans[first][1] <= spans[second][0]  # one after the other
    firsts.clear()
    assert rollout.restore(["b"], log=print) == []
