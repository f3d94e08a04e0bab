"""A shadow canary in the router: a share of live requests is sent again to a candidate once production has
answered, and each pair is kept, so a promotion can judge the candidate on what users send
(``tasks.serving.canary``). Clients only ever get production's answer: the copy starts after it, off their path.

The router state's ``shadow`` says where and how much: ``target`` (the candidate's URL), ``adapter`` (its model on
a shared base, set in each copy's ``model``), ``version``, ``api_key`` (the candidate requires the router's key),
``share`` (of the POSTs to ``/v1/``), ``pairs`` (the JSON-lines file each pair is appended to) and ``max_pairs``.
A pair is the request, production's and the candidate's status, latency and answer (the first
``MAX_KEPT_BYTES``), secrets masked. At most ``MAX_INFLIGHT`` copies run at once; a request sampled beyond that
is skipped and counted, never queued behind production.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tasks.masking import redact_text

MAX_INFLIGHT = 4
MAX_KEPT_BYTES = 64_000


def sampled(n: int, share: float) -> bool:
    """Whether the ``n``-th request (from 0) is mirrored: exactly ``share`` of them, evenly spread."""
    return math.floor((n + 1) * share) > math.floor(n * share)


def kept(data: bytes) -> str:
    return redact_text(data[:MAX_KEPT_BYTES].decode("utf-8", errors="replace"))


def read_pairs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def append_pair(path: Path, pair: dict[str, Any]) -> None:
    """One line, appended in one write (O_APPEND: lines of concurrent copies never interleave), owner-only."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(pair) + "\n").encode())
    finally:
        os.close(fd)


class Shadow:
    """The router's mirror: ``take`` decides per request, ``after`` sends the copy once production answered.
    ``send`` and ``keep`` are its transport (HTTP to the candidate's URL, the pairs file); the Ray platform's route
    has its own (``tasks.servers.ray_shadow``)."""

    def __init__(self, client, api_key: str | None = None):
        self.client, self.api_key = client, api_key  # the router's httpx.AsyncClient and key
        self.seen: Counter[str] = Counter()  # requests considered, per pairs file (a canary)
        self.counts: Counter[str] = Counter()  # mirrored, skipped (too many at once), failed to record
        self.running = 0
        self.tasks: set[asyncio.Task] = set()  # held until done: the loop keeps only weak references

    def take(self, shadow: dict | None, method: str, path: str) -> bool:
        if not shadow or method != "POST" or not path.startswith("/v1/"):
            return False
        pairs = shadow["pairs"]
        n = self.seen[pairs]
        self.seen[pairs] += 1
        if not sampled(n, float(shadow["share"])) or self.counts[f"taken:{pairs}"] >= int(shadow["max_pairs"]):
            return False
        self.counts[f"taken:{pairs}"] += 1
        return True

    def after(self, shadow: dict, path: str, headers: Any, body: bytes, copy: bytes,
              production: dict[str, Any]) -> None:
        """Send ``copy`` of the request ``body`` (its ``model`` set to the candidate's adapter, if any) to the
        candidate in the background; production's answer has gone to the client."""
        if self.running >= MAX_INFLIGHT:
            self.counts["skipped"] += 1
            return
        self.running += 1
        task = asyncio.get_running_loop().create_task(self._mirror(shadow, path, headers, body, copy, production))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _mirror(self, shadow: dict, path: str, headers: Any, body: bytes, copy: bytes,
                      production: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            status, answer = await self.send(shadow, path, headers, copy)
            candidate = {"status": status, "latency_s": time.monotonic() - started, "body": kept(answer)}
        except Exception as e:  # noqa: BLE001 (the candidate failed: that is its answer)
            candidate = {"status": 0, "latency_s": time.monotonic() - started, "body": "",
                         "error": f"{type(e).__name__}: {e}"}
        finally:
            self.running -= 1
        pair = {"at": time.time(), "path": path, "version": shadow.get("version"), "request": kept(body),
                "production": production, "candidate": candidate}
        try:
            await self.keep(shadow, pair)
            self.counts["mirrored"] += 1
        except Exception:  # noqa: BLE001 (a pair that cannot be kept is counted; serving goes on)
            self.counts["unrecorded"] += 1

    async def send(self, shadow: dict, path: str, headers: list[tuple[str, str]], copy: bytes) -> tuple[int, bytes]:
        """The copy sent to the candidate's URL: its status and answer."""
        if shadow.get("api_key") and self.api_key:  # the candidate's key, whatever production asks for
            headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
            headers.append(("authorization", f"Bearer {self.api_key}"))
        reply = await self.client.post(f"{shadow['target']}{path}", headers=headers, content=copy)
        return reply.status_code, reply.content

    async def keep(self, shadow: dict, pair: dict[str, Any]) -> None:
        append_pair(Path(shadow["pairs"]), pair)

    def status(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if ":" not in k}
