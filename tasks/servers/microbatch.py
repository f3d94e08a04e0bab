"""Batching concurrent requests for an encoder: the requests queued while the model is busy, and those that
arrive within ``wait_ms`` (default 0: no request waits for company), run through the model together, in one
worker thread, up to ``max_batch`` items a call.

Sixteen clients each sending one sentence become one forward pass of sixteen, not sixteen passes of one; a
request larger than ``max_batch`` is cut into full batches. ``calls`` and ``items`` count what the model did,
so a test (and the benchmark) can see that requests were batched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class MicroBatcher:
    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], max_batch: int, wait_ms: float):
        """At most ``max_batch`` items a call; a batch waits ``wait_ms`` for company: the server's settings, with no
        defaults of their own here."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.fn, self.max_batch, self.wait_s = fn, max_batch, wait_ms / 1000
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="encoder")  # one model, one thread
        self.queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.calls = self.items = 0

    async def submit(self, items: list[Any]) -> list[Any]:
        """The model's output for ``items``, in order, once their batch has run."""
        loop = asyncio.get_running_loop()
        if self.queue is None or self._loop is not loop:  # first use, or a new event loop (a test client's)
            self.queue, self._loop = asyncio.Queue(), loop
            self._worker = loop.create_task(self._run())
        done = loop.create_future()
        await self.queue.put((items, done))
        return await done

    async def _gather(self) -> list[tuple[list[Any], asyncio.Future]]:
        """The first request waiting, everything queued behind it, and what arrives within ``wait_ms``. While a
        batch runs, new requests queue up: they make the next batch even with no wait at all."""
        loop = asyncio.get_running_loop()
        pending = [await self.queue.get()]
        count, deadline = len(pending[0][0]), loop.time() + self.wait_s
        while count < self.max_batch:
            if not self.queue.empty():
                pending.append(self.queue.get_nowait())
            elif (left := deadline - loop.time()) > 0:
                try:
                    pending.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            else:
                break
            count += len(pending[-1][0])
        return pending

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = await self._gather()
            items = [item for request, _ in pending for item in request]
            try:
                out: list[Any] = []
                for start in range(0, len(items), self.max_batch):
                    chunk = items[start:start + self.max_batch]
                    out.extend(await loop.run_in_executor(self.executor, self.fn, chunk))
                    self.calls, self.items = self.calls + 1, self.items + len(chunk)
            except Exception as e:  # every request of the batch hears of it; the worker goes on
                for _, done in pending:
                    if not done.done():
                        done.set_exception(e)
                continue
            start = 0
            for request, done in pending:
                if not done.done():
                    done.set_result(out[start:start + len(request)])
                start += len(request)
