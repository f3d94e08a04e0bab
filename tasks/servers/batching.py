"""Batched, streamed generation for the built-in server.

Requests wait in a queue; one worker thread takes what arrives within ``wait_ms`` of the first (up to
``max_batch``) and decodes them as one left-padded batch with a KV cache, step by step, so each request's text
can be streamed as it grows. A row stops at EOS (unless ``ignore_eos``), at a stop string or at its own
``max_tokens``; the batch ends when every row has. Sixteen requests at once cost about what one does on a small
model, which is where the throughput comes from.

Greedy rows take the argmax (the same tokens as ``tasks.inference.generate``); sampled rows draw from the
softmax at ``temperature`` within ``top_p``, from a generator seeded by ``seed`` when one is given. A row that
fails (its seed, its sampling, its client's callback) fails its own request; the other rows decode on, with the
answers they would have had without it.

With ``adapters`` (``tasks.servers.adapters``), each row decodes with its request's LoRA adapter on the shared
base, rows of different adapters in one batch; a batch takes rows of at most ``max_resident`` adapters (the rest
wait for the next). Work on the model itself (loading an adapter) is queued like a request (``call``) and runs
between batches.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from tasks.servers.adapters import AdapterError

REPLACEMENT = "\ufffd"  # decode's stand-in for the first bytes of a character whose rest has not come yet


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    adapter: str | None = None  # the LoRA adapter this row decodes with (None: the base model)
    cancelled: bool = False  # set by the server when the client has gone: the row stops at the next step
    # Called from the worker thread: ("text", piece) as text is ready, then ("done", None) or ("error", exc).
    on_event: Callable[[str, object], None] = lambda kind, value: None
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: Exception | None = None  # what failed this request's row alone; the batch's other rows go on


def pick(logits: torch.Tensor, req: GenRequest, generator: torch.Generator | None) -> int:
    """The next token of one row: the argmax at temperature 0, else a draw within ``top_p``."""
    if req.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / req.temperature, dim=-1)
    if req.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= req.top_p  # the first token always stays
        probs = probs.scatter(0, order[outside], 0.0)
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


class _Row:
    """One request's decoding state inside a batch."""

    def __init__(self, req: GenRequest, tokenizer):
        self.req, self.tokenizer = req, tokenizer
        self.ids: list[int] = []
        self.sent = 0  # characters of the text already passed to on_event
        self.generator = torch.Generator().manual_seed(req.seed) if req.seed is not None else None
        self.hold = max((len(s) for s in req.stop), default=1) - 1  # a stop string may still be forming

    def add(self, token: int, eos: int | None) -> bool:
        """Take one token; True when the row has finished."""
        req = self.req
        if token == eos and not req.ignore_eos:
            return self.finish("stop")
        self.ids.append(token)
        req.completion_tokens = len(self.ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in req.stop) if i >= 0), default=-1)
        if cut >= 0:
            req.text = text[:cut]
            return self.finish("stop")
        req.text = text
        if len(self.ids) >= req.max_tokens:
            return self.finish("length")
        if not text.endswith(REPLACEMENT):
            self.flush(len(text) - self.hold)
        return False

    def flush(self, upto: int) -> None:
        if upto > self.sent:
            self.req.on_event("text", self.req.text[self.sent:upto])
            self.sent = upto

    def finish(self, reason: str) -> bool:
        self.req.finish_reason = reason
        self.flush(len(self.req.text))
        return True


def generate_batch(model, tokenizer, reqs: list[GenRequest], on_step: Callable[[], None] = lambda: None,
                   forward_kwargs: dict | None = None) -> None:
    """Decode ``reqs`` together; each request gets its text, token count and finish reason, and its events;
    ``on_step`` runs after each step's events (a server delivers them together: one wake-up, not one a row);
    ``forward_kwargs`` go to every forward pass (the rows' adapters)."""
    rows: list[_Row | None] = []
    for r in reqs:  # a row that cannot even start (its seed, say) fails alone
        try:
            rows.append(_Row(r, tokenizer))
        except Exception as e:
            r.error = e
            rows.append(None)
    width = max(len(r.prompt_ids) for r in reqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    ids = torch.full((len(reqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(reqs), width), dtype=torch.long)
    for i, r in enumerate(reqs):
        if r.prompt_ids:
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    active = [row is not None for row in rows]
    # transformers 5.24 renamed the KV cache argument ``past_key_values`` -> ``cache``; serve either (a PEFT
    # wrapper's forward takes **kwargs: its base model's names it).
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    past = None
    with torch.inference_mode():
        for _ in range(max(r.max_tokens for r in reqs)):
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{name: past},
                        **(forward_kwargs or {}))
            past, logits = out[name], out.logits[:, -1, :].float()
            logits = logits.cpu()  # one copy a step; the per-row choices below are small
            nxt = torch.full((len(reqs),), pad, dtype=torch.long)
            for i, row in enumerate(rows):
                if not active[i]:
                    continue
                try:
                    if row.req.cancelled:
                        active[i] = not row.finish("cancelled")
                    else:
                        nxt[i] = pick(logits[i], row.req, row.generator)
                        active[i] = not row.add(int(nxt[i]), tokenizer.eos_token_id)
                except Exception as e:  # its sampling or its client's callback: this request's failure alone
                    traceback.print_exc()
                    row.req.error, active[i] = e, False
            on_step()
            if not any(active):
                break
            ids, positions = nxt[:, None].to(device), positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((len(reqs), 1), dtype=torch.long, device=device)], dim=1)


@dataclass
class _Call:
    """Work on the model, run between batches; its result or error goes to ``future``."""
    fn: Callable[[], object]
    future: Future


class Batcher:
    """The queue and its worker thread. ``submit`` returns at once; the request's ``on_event`` reports."""

    def __init__(self, model, tokenizer, max_batch: int, wait_ms: float, adapters=None):
        """At most ``max_batch`` rows a batch, gathered within ``wait_ms`` of the first: the server's settings.
        With ``adapters`` (``tasks.servers.adapters.Adapters``) the model is theirs: rows name their adapter."""
        self.model, self.tokenizer, self.adapters = model, tokenizer, adapters
        self.max_batch, self.wait_s = max_batch, wait_ms / 1000
        self.queue: queue.Queue[GenRequest | _Call | None] = queue.Queue()
        self.waiting: deque[GenRequest | _Call | None] = deque()  # taken from the queue, for a later batch
        self.on_step: Callable[[], None] = lambda: None  # after each step's events, and after a batch ends
        self.batches = 0  # how many batches ran, and their sizes: what a test or the log can read
        self.largest = 0
        self.thread = threading.Thread(target=self._work, name="fineflow-batcher", daemon=True)
        self.thread.start()

    def submit(self, req: GenRequest) -> None:
        self.queue.put(req)

    def call(self, fn: Callable[[], object]) -> Future:
        """Run ``fn`` on the worker thread between batches (a change to the model); its future reports."""
        future: Future = Future()
        self.queue.put(_Call(fn, future))
        return future

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _next(self, timeout: float | None = None) -> GenRequest | _Call | None:
        if self.waiting:
            return self.waiting.popleft()
        return self.queue.get(timeout=timeout)

    def _collect(self, first: GenRequest) -> list[GenRequest]:
        batch, later = [first], []
        adapters = {first.adapter} - {None}
        limit = self.adapters.max_resident if self.adapters else 0
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                req = self._next(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if req is None or isinstance(req, _Call):  # closing, or work on the model: after this batch
                later.append(req)
                break
            if req.adapter is not None and req.adapter not in adapters and len(adapters) >= limit:
                later.append(req)  # its adapter would not fit beside this batch's: the next batch
                continue
            if req.adapter is not None:
                adapters.add(req.adapter)
            batch.append(req)
        self.waiting.extendleft(reversed(later))
        return batch

    def _work(self) -> None:
        while (first := self._next()) is not None:
            if isinstance(first, _Call):
                if first.future.set_running_or_notify_cancel():  # its caller may have given up waiting
                    try:
                        first.future.set_result(first.fn())
                    except Exception as e:
                        first.future.set_exception(e)
                continue
            batch = self._collect(first)
            self.batches += 1
            self.largest = max(self.largest, len(batch))
            try:
                model, extra, rows = self.model, None, batch
                if self.adapters:
                    rows = self._loaded(batch)
                    model, extra = self.adapters.model, self.adapters.forward_kwargs([r.adapter for r in rows])
                if rows:
                    generate_batch(model, self.tokenizer, rows, self.on_step, extra)
                failed: Exception | None = None
            except Exception as e:  # a failed batch fails its requests, not the server
                traceback.print_exc()
                failed = e
            for req in batch:
                error = failed or req.error  # a row that failed alone fails only its request
                try:
                    req.on_event(*(("error", error) if error else ("done", None)))
                except Exception:  # a broken callback must not stop the thread every request waits on
                    traceback.print_exc()
            self.on_step()

    def _loaded(self, batch: list[GenRequest]) -> list[GenRequest]:
        """The rows to decode, their adapters made resident: a row whose adapter was unloaded after it was queued,
        or cannot be loaded again, fails alone."""
        rows, gone = [], []
        for r in batch:
            (gone if r.adapter is not None and r.adapter not in self.adapters.known else rows).append(r)
        for r in gone:
            r.error = AdapterError(404, f"adapter {r.adapter!r} was unloaded")
        failed = self.adapters.prepare({r.adapter for r in rows} - {None})
        for r in rows:
            if r.adapter in failed:
                r.error = failed[r.adapter]
        return [r for r in rows if r.adapter not in failed]
