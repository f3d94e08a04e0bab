"""The shadow canary on the Ray platform: the model@alias route (``ray_serve.AliasRoute``) copies a share of its live
requests to the candidate's application once production answered, with the local router's sampling, bounds and
pairs (``tasks.servers.shadow``); the copy goes through Serve's handle (with the adapter's multiplexed model id),
and each pair to a detached actor named after the route (``PairSink``), where a driver on any machine reads them.

    python -m tasks.servers.ray_serve mirror --address HEAD --app MODEL@ALIAS --route /m/a --shadow JSON  # '' stops
    python -m tasks.servers.ray_serve pairs --address HEAD --app MODEL@ALIAS                              # JSON

``--shadow``: ``target`` (the candidate's application), ``model_id`` (its adapter's id, or ""), ``version``,
``share``, ``pairs`` (a name for the canary: a new one starts counting again) and ``max_pairs``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tasks.servers.shadow import Shadow

NAMESPACE = "serve"  # the drivers' (ray_serve.connect): the sink is found by name from either side


def sink_name(app: str) -> str:
    return f"fineflow-pairs-{app}"


def pair_sink():
    """The actor class holding one canary's pairs (at most ``max_pairs``), made when Ray is imported."""
    import ray

    @ray.remote(num_cpus=0)
    class PairSink:
        def __init__(self, max_pairs: int):
            self.max_pairs, self.pairs = max_pairs, []

        def add(self, pair: dict) -> None:
            if len(self.pairs) < self.max_pairs:
                self.pairs.append(pair)

        def all(self) -> list[dict]:
            return list(self.pairs)

    return PairSink


class RayShadow(Shadow):
    """The route replica's mirror: the copy through the candidate application's handle, the pair to the sink."""

    def __init__(self):
        super().__init__(client=None)

    async def send(self, shadow: dict, path: str, headers: dict[str, str], copy: bytes) -> tuple[int, bytes]:
        from ray import serve

        handle = serve.get_app_handle(shadow["target"])
        if shadow.get("model_id"):  # an adapter version: its adapter on the shared base application
            handle = handle.options(multiplexed_model_id=shadow["model_id"])
        status, _, answer, _, _ = await handle.forward.remote("POST", path, headers, copy)
        return status, answer

    async def keep(self, shadow: dict, pair: dict[str, Any]) -> None:
        import ray

        await ray.get_actor(shadow["sink"], namespace=NAMESPACE).add.remote(pair)


def mirror(serve, alias_route, opts: argparse.Namespace) -> dict:
    """Start copying (``opts.shadow``: JSON) or stop (''): a fresh sink, then the route reconfigured in place with
    the target it has; stopping drops the sink and its pairs (read them first)."""
    import ray

    current = serve.get_app_handle(opts.app).current.remote().result()
    name = sink_name(opts.app)
    try:
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
    except ValueError:  # none yet
        pass
    shadow = json.loads(opts.shadow) if opts.shadow else None
    if shadow:
        sink = pair_sink().options(name=name, namespace=NAMESPACE, lifetime="detached").remote(
            int(shadow["max_pairs"]))
        ray.get(sink.all.remote(), timeout=120)  # up before the route sends it anything
        shadow = {**shadow, "sink": name}
    app = alias_route(opts.replicas, {**current, "shadow": shadow})
    serve.run(app, name=opts.app, route_prefix=opts.route, blocking=False)  # in place: AliasRoute.reconfigure
    return {"app": opts.app, "mirroring": shadow is not None}


def pairs(opts: argparse.Namespace) -> dict:
    """The pairs kept so far by the route's mirror (none when it is not mirroring)."""
    import ray

    try:
        sink = ray.get_actor(sink_name(opts.app), namespace=NAMESPACE)
    except ValueError:
        return {"app": opts.app, "pairs": []}
    return {"app": opts.app, "pairs": ray.get(sink.all.remote(), timeout=120)}
