"""Production traffic and feedback on the Ray platform: the model@alias route (``ray_serve.AliasRoute``) records a
share of its requests and answers, and answers ``POST /v1/feedback``, as the local router does
(``tasks.servers.traffic``: sampling, masking, bounds, batches to ``s3://BUCKET/traffic/...``).

Each route replica has its own recorder, writing from its node through the main environment's
``tasks.services.storage`` (``fetch_python``). The request ids it gave live in a detached actor named after the
route (``RequestIds``), so feedback is taken by whichever replica Serve sends it to, after a switch too. Each
replica reports its counts (recorded, failed, dropped, ...) to that actor every ``REPORT_S`` while they change, and
the route's ``GET /router/status`` sums them, as the local router's status counts its one recorder's.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import Counter, OrderedDict
from functools import partial

from tasks.servers.ray_node import node_api_key
from tasks.servers.ray_shadow import NAMESPACE
from tasks.servers.router import bucket_put, error
from tasks.servers.traffic import FEEDBACK_PER_S, KNOWN_IDS, MAX_FEEDBACK_BYTES, Recorder, given_feedback

RECALL_S = 2.0
REPORT_S = 2.0


def ids_name(app: str) -> str:
    return f"fineflow-request-ids-{app}"


def request_ids(app: str):
    """The route's actor of recorded request ids (the most recent ``KNOWN_IDS``), made by the first replica that
    records."""
    import ray

    @ray.remote(num_cpus=0)
    class RequestIds:
        def __init__(self):
            self.known: OrderedDict[str, str] = OrderedDict()
            self.counts: dict[str, dict[str, int]] = {}  # per route replica, as it last reported them

        def report(self, replica: str, counts: dict[str, int]) -> None:
            self.counts[replica] = counts

        def totals(self) -> dict[str, int]:
            return dict(sum((Counter(c) for c in self.counts.values()), Counter()))

        def remember(self, request_id: str, folder: str) -> None:
            self.known[request_id] = folder
            while len(self.known) > KNOWN_IDS:
                self.known.popitem(last=False)

        def folder(self, request_id: str) -> str | None:
            return self.known.get(request_id)

    # Started again where its node dies (the ids it held are lost: feedback on them is refused, nothing else).
    return RequestIds.options(name=ids_name(app), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                              max_restarts=-1, max_task_retries=-1).remote()


class RayTraffic:
    """One route replica's recording: ``take`` per request, ``after`` once it is answered; ``own`` answers the
    route's own paths (feedback, status)."""

    def __init__(self, app: str):
        from ray import serve

        self.replica = serve.get_replica_context().replica_id.unique_id  # made in a route replica
        self.app, self.recorder, self.ids, self.key = app, None, None, None
        self.tasks: set[asyncio.Task] = set()

    def _ready(self, config: dict) -> Recorder:
        if self.recorder is None:
            put = partial(bucket_put, python=config.get("fetch_python", ""), bucket=config.get("bucket", ""))
            self.recorder = Recorder(str(config.get("model") or self.app.split("@")[0]), put)
            self.ids = request_ids(self.app)
            self._background(self._report())
        return self.recorder

    def _background(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _report(self) -> None:
        """This replica's counts to the route's actor, every ``REPORT_S`` while they change (the batches are written
        by the recorder's own thread, after the requests)."""
        reported: dict[str, int] | None = None
        while True:
            await asyncio.sleep(REPORT_S)
            try:
                if (counts := self.recorder.status()) != reported:
                    await self.ids.report.remote(self.replica, counts)
                    reported = counts
            except Exception:  # noqa: BLE001 (the actor being started again, or a count added as it was read)
                pass  # told at the next round

    async def own(self, config: dict, method: str, path: str, headers, body: bytes):
        """The answer to a request for the route itself (``POST /v1/feedback``, ``GET /router/status``), or None."""
        where, authorization = (method, path.partition("?")[0]), headers.get("authorization", "")
        if where == ("POST", "/v1/feedback"):
            return await self.feedback(config, authorization, body)
        return await self.status(config, authorization) if where == ("GET", "/router/status") else None

    async def status(self, config: dict, authorization: str):
        """What the local router's ``/router/status`` says, behind the key: the version served, the replica that
        answers, the canary's target, and the traffic counts of every replica."""
        from starlette.responses import JSONResponse

        if not self.authorized(config, authorization):
            return error(401, "a valid API key is required: Authorization: Bearer <key>")
        return JSONResponse({"target": config["target"], "version": config["version"], "model_id": config["model_id"],
                             "replica": self.replica, "shadow": (config.get("shadow") or {}).get("target"),
                             "traffic": await self.totals()})

    async def totals(self) -> dict[str, int]:
        """Every replica's counts summed, as last reported (empty: nothing recorded yet)."""
        import ray

        try:  # looked up, not made: a route that records nothing has no actor
            return await ray.get_actor(ids_name(self.app), namespace=NAMESPACE).totals.remote()
        except Exception:  # noqa: BLE001 (none yet, or gone with its node and not started again yet)
            return {}

    def take(self, config: dict, method: str, path: str) -> str | None:
        return self._ready(config).take(config.get("traffic"), method, path) if config.get("traffic") else None

    def after(self, config: dict, request_id: str, version: str, path: str, body: bytes, status: int, answer: bytes,
              latency_s: float) -> None:
        """Recorded off the client's path (the answer is on its way); what fails here is counted, never raised."""
        self._background(self._record(config, request_id, version, path, body, status, answer, latency_s))

    async def _record(self, config: dict, request_id: str, version: str, path: str, body: bytes, status: int,
                      answer: bytes, latency_s: float) -> None:
        recorder = self._ready(config)
        try:
            recorder.record(config["traffic"], request_id, version, path, body, status, answer, latency_s)
            await self.ids.remember.remote(request_id, recorder.known[request_id])
        except Exception:  # noqa: BLE001
            recorder.counts["unrecorded"] += 1

    def authorized(self, config: dict, authorization: str) -> bool:
        if not config.get("api_key", True):
            return True
        if self.key is None:
            self.key = node_api_key("key")["key"]  # this node's, as its engine servers read it
        scheme, _, given = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), self.key.encode())

    async def feedback(self, config: dict, authorization: str, body: bytes):
        """The answer to ``POST /v1/feedback``, by the router's rules (``tasks.servers.router``)."""
        from starlette.responses import JSONResponse

        if not self.authorized(config, authorization):
            return error(401, "a valid API key is required: Authorization: Bearer <key>")
        if not config.get("traffic"):
            return error(404, f"{self.app} records no traffic (deploy.traffic), so it takes no feedback")
        recorder = self._ready(config)
        if not recorder.allowed(authorization or "anonymous"):
            return error(429, f"too much feedback: at most {FEEDBACK_PER_S:g} a second per key")
        given = given_feedback(body if len(body) <= MAX_FEEDBACK_BYTES else None)
        if isinstance(given, tuple):
            return error(*given)
        folder = recorder.known.get(given.request_id) or await self.recalled(given.request_id)
        if folder is None or recorder.feedback(given, config["traffic"].get("mask_patterns", []), folder) is None:
            return error(404, f"request id {given.request_id} is not one this route recorded recently")
        return JSONResponse({"status": "recorded", "request_id": given.request_id})

    async def recalled(self, request_id: str) -> str | None:
        """Where another replica recorded ``request_id``: its record may still be on its way to the actor (it is
        made after the answer went out), so an unknown id is asked for again for ``RECALL_S``."""
        deadline = time.monotonic() + RECALL_S
        try:
            while (folder := await self.ids.folder.remote(request_id)) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        except Exception:  # noqa: BLE001 (the actor is gone: the id is not known, said as a 404)
            return None
        return folder

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close(timeout_s=10)

