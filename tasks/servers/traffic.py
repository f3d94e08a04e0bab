"""Production traffic and feedback, recorded by the model@alias router (opt-in per pipeline: ``deploy.traffic``).

A sampled request gets an id, returned to the client in the ``x-fineflow-request-id`` header; once its answer has
gone to the client, the request and the answer (masked: known secrets, and the pipeline's ``mask_patterns``) are
queued and written to the bucket in batches as JSON lines under
``s3://BUCKET/traffic/<model>/<version>/<date>/``. ``POST /v1/feedback`` (``request_id``, a ``rating`` of -1, 0 or 1
and/or a ``correction``) is checked against the ids recorded recently and queued the same way, beside them.

Nothing here can fail or slow a client's request: the queue is bounded (a record that does not fit is dropped),
the writer is a thread of its own, and a batch the bucket refuses is dropped; each is counted in
``/router/status``. Feedback is bounded too: its body (``MAX_FEEDBACK_BYTES``) and a rate per key.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.masking import MASK, redact_text
from tasks.servers.shadow import sampled

HEADER = "x-fineflow-request-id"
MAX_FEEDBACK_BYTES = 16_000
KNOWN_IDS = 100_000  # request ids feedback may name (the most recent)
QUEUE = 10_000  # records waiting for the writer
BATCH = 500
FLUSH_S = 5.0
FEEDBACK_PER_S, FEEDBACK_BURST = 20.0, 40  # per key


class TrafficConfig(BaseModel):
    """``deploy.traffic``: record a share of production's requests and answers, and take feedback on them."""

    model_config = ConfigDict(extra="forbid")

    share: float = Field(1.0, gt=0, le=1)
    # Regular expressions whose matches are masked before anything is stored (PII: e-mail addresses, phones, ...).
    mask_patterns: list[str] = Field(default_factory=list, max_length=100)
    max_kept_bytes: int = Field(64_000, ge=1_000, le=64_000)  # of each request and answer

    @field_validator("mask_patterns")
    @classmethod
    def compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"mask pattern {p!r} is not a regular expression: {e}") from e
        return patterns


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")
    rating: int | None = Field(None, ge=-1, le=1)
    correction: str | None = Field(None, max_length=8_000)


def given_feedback(body: bytes | None) -> Feedback | tuple[int, str]:
    """The feedback ``body`` gives (None: over ``MAX_FEEDBACK_BYTES``), or (status, why) for a refusal."""
    if body is None:
        return 413, f"feedback over the limit of {MAX_FEEDBACK_BYTES} bytes"
    try:
        given = Feedback.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        return 400, f"feedback: {'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}"
    if given.rating is None and not given.correction:
        return 400, "feedback: give a rating (-1, 0 or 1), a correction, or both"
    return given


def masked(text: str, patterns: list[str]) -> str:
    text = redact_text(text)
    for p in patterns:
        text = re.sub(p, MASK, text)
    return text


class Recorder:
    """The router's recorder: ``take`` per request, ``record`` after its answer, ``feedback``; ``put(key, data)``
    writes one object to the bucket (the writer thread calls it)."""

    def __init__(self, model: str, put: Callable[[str, bytes], None], clock: Callable[[], float] = time.time):
        self.model, self.put, self.clock = model, put, clock
        self.seen = 0
        self.known: OrderedDict[str, str] = OrderedDict()  # request id -> where its record went (version/date)
        self.counts: Counter[str] = Counter()
        self.queue: queue.Queue[tuple[str, dict] | None] = queue.Queue(QUEUE)
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self.thread = threading.Thread(target=self._write, name="traffic-writer", daemon=True)
        self.thread.start()

    def take(self, cfg: dict | None, method: str, path: str) -> str | None:
        """A request id when this request is recorded (``cfg``: the route's ``traffic``), else None."""
        if not cfg or method != "POST" or not path.startswith("/v1/") or path == "/v1/feedback":
            return None
        n, self.seen = self.seen, self.seen + 1
        return uuid.uuid4().hex if sampled(n, float(cfg.get("share", 1.0))) else None

    def folder(self, version: str) -> str:
        return f"{version}/{time.strftime('%Y-%m-%d', time.gmtime(self.clock()))}"

    def record(self, cfg: dict, request_id: str, version: str, path: str, body: bytes, status: int,
               answer: bytes, latency_s: float) -> None:
        limit, patterns = int(cfg.get("max_kept_bytes", 64_000)), cfg.get("mask_patterns", [])

        def text(data: bytes) -> str:
            return masked(data[:limit].decode("utf-8", errors="replace"), patterns)

        folder = self.folder(version)
        self._queue(folder, {"kind": "request", "request_id": request_id, "at": self.clock(), "model": self.model,
                             "version": version, "path": path, "request": text(body), "status": status,
                             "answer": text(answer), "latency_s": latency_s})
        self.known[request_id] = folder
        while len(self.known) > KNOWN_IDS:
            self.known.popitem(last=False)

    def allowed(self, key: str) -> bool:
        """A token bucket per key: FEEDBACK_PER_S on average, bursts up to FEEDBACK_BURST."""
        now = time.monotonic()
        tokens, at = self.buckets.get(key, (FEEDBACK_BURST, now))
        tokens = min(FEEDBACK_BURST, tokens + (now - at) * FEEDBACK_PER_S)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            return False
        self.buckets[key] = (tokens - 1, now)
        return True

    def feedback(self, given: Feedback, patterns: list[str], folder: str | None = None) -> str | None:
        """Queue ``given`` beside its request's record (in ``folder`` where another recorder knows it); None when
        the id is not one recorded recently."""
        folder = folder or self.known.get(given.request_id)
        if folder is None:
            return None
        self._queue(folder, {"kind": "feedback", "request_id": given.request_id, "at": self.clock(),
                             "model": self.model, "rating": given.rating,
                             "correction": masked(given.correction, patterns) if given.correction else None})
        return folder

    def _queue(self, folder: str, record: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait((folder, record))
        except queue.Full:
            self.counts["dropped"] += 1

    def _write(self) -> None:
        """The writer thread: a batch per folder every FLUSH_S seconds or BATCH records, one object each."""
        pending: dict[str, list[dict]] = {}
        deadline = time.monotonic() + FLUSH_S
        while True:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = ()
            if item is None:  # closed: what is pending is written, then the thread ends
                self._flush(pending)
                return
            if item:
                pending.setdefault(item[0], []).append(item[1])
            if time.monotonic() >= deadline or sum(map(len, pending.values())) >= BATCH:
                self._flush(pending)
                pending, deadline = {}, time.monotonic() + FLUSH_S

    def _flush(self, pending: dict[str, list[dict]]) -> None:
        for folder, records in pending.items():
            key = f"traffic/{self.model}/{folder}/{time.strftime('%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}.jsonl"
            try:
                self.put(key, "".join(json.dumps(r) + "\n" for r in records).encode())
                for r in records:
                    self.counts["recorded" if r["kind"] == "request" else "feedback"] += 1
            except Exception:  # the bucket is down or refuses: the records are lost, counted, and serving goes on
                self.counts["failed"] += len(records)

    def close(self, timeout_s: float = 30) -> None:
        try:
            self.queue.put(None, timeout=timeout_s)  # a full queue behind a stuck writer: give up, do not hang
        except queue.Full:
            return
        self.thread.join(timeout=timeout_s)

    def status(self) -> dict[str, int]:
        return dict(self.counts)
