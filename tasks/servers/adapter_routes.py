"""vLLM's runtime LoRA routes on the built-in server: ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``.

A load is checked here (``Adapters.check``: no weight read), then done on the batcher's thread between batches,
where every change to the model happens; the request waits for it and answers what is resident after.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from tasks.servers.adapters import AdapterError, Adapters
from tasks.servers.batching import Batcher
from tasks.servers.openai_api import ApiError, LoadAdapter, UnloadAdapter


def adapter_routes(app: FastAPI, lora: Adapters | None, batcher: Batcher, name: str) -> None:
    """The routes on ``app`` (the server ``name``); without ``lora`` they answer that it serves no adapters."""

    def adapters_served() -> Adapters:
        if lora is None:
            raise ApiError(404, "this server serves no adapters (start it with --max-adapters N)")
        return lora

    async def on_model(fn, verb: str) -> None:
        """``fn`` on the batcher's thread between batches (a change to the model), awaited here."""
        try:
            await asyncio.wrap_future(batcher.call(fn))
        except AdapterError as e:
            raise ApiError(e.status, e.message, "lora_name") from e
        except (ValueError, RuntimeError, OSError) as e:  # PEFT's refusal: files or shapes that do not fit the base
            raise ApiError(400, f"the adapter did not {verb} on {name}: {type(e).__name__}: "
                                f"{str(e).splitlines()[0][:300]}", "lora_path") from e

    @app.post("/v1/load_lora_adapter")
    async def load_adapter(req: LoadAdapter):
        served = adapters_served()
        try:
            adapter = served.check(req.lora_name, req.lora_path, req.base_revision)
        except AdapterError as e:
            raise ApiError(e.status, e.message, "lora_name") from e
        await on_model(lambda: served.add(adapter), "load")
        return {"status": "loaded", "lora_name": adapter.name, "resident": list(served.resident)}

    @app.post("/v1/unload_lora_adapter")
    async def unload_adapter(req: UnloadAdapter):
        served = adapters_served()
        await on_model(lambda: served.remove(req.lora_name), "unload")
        return {"status": "unloaded", "lora_name": req.lora_name, "resident": list(served.resident)}
