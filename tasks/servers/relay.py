"""The built-in OpenAI-compatible server for a transformers causal LM.

    FINEFLOW_API_KEY=... python -m tasks.servers.relay --model PATH --port 8000 [--host 127.0.0.1] [--name NAME]
        [--prompt-style S] [--max-tokens 512] [--max-body-bytes 1000000] [--max-batch 16] [--batch-wait-ms 5]
        [--max-adapters 8 --base-revision R [--adapter NAME=PATH ...] [--adapter-root DIR ...] [--adapter-state F]]

Routes: ``/health`` (open), ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` (both with
``stream: true`` as server-sent events, and ``usage``). Prompts are handled in ``--prompt-style``
(``tasks.inference``: a prompter name, or ``chat_template``), the style the model was finetuned in: a
completion prompt is taken as rendered text; chat messages (the system and the last user message) are
rendered in it.

Concurrent requests are decoded together (``tasks.servers.batching``). With ``--max-adapters N`` the server also
serves LoRA adapters of its model (``tasks.servers.adapters``): ``model`` in a request names the base (the server's
``--name``) or an adapter; ``POST /v1/load_lora_adapter`` (``lora_name``, ``lora_path``, optionally
``base_revision``) and ``POST /v1/unload_lora_adapter`` (``lora_name``) change them at runtime, vLLM's routes; at
most N stay in memory, the least recently used evicted and loaded again when asked for; an adapter is read only from
under ``--adapter-root`` (default ``$FINEFLOW_HOME``); with ``--adapter-state`` a restart by the supervisor comes back
with the adapters it had. With ``FINEFLOW_API_KEY`` in the environment every ``/v1``
route needs ``Authorization: Bearer <key>``; without it the server binds only a loopback address. Every request is
bounded before any model work: the body's size, ``max_tokens``, and the prompt's length in tokens (with
``max_tokens``, within the model's context). Sampling parameters are honoured (``temperature``, ``top_p``, ``seed``,
``stop``) or refused with a 400 (``n`` > 1, penalties), never ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import deque
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from tasks import inference
from tasks.servers.adapter_routes import adapter_routes
from tasks.servers.adapters import AdapterError, Adapters
from tasks.servers.auth import required_key
from tasks.servers.batching import Batcher, GenRequest
from tasks.servers.openai_api import ApiError, ChatRequest, CompletionRequest, Sampling, guard, sse, uvicorn_server
from tasks.servers.supervise import RESTARTS_ENV
from tasks.settings import env, state_dir


def longest_token_chars(tokenizer) -> int:
    """How many characters one token can stand for at most: a prompt longer than ``limit`` times this is over
    ``limit`` tokens, known without tokenizing it."""
    return max(len(tokenizer.convert_tokens_to_string([t])) for t in tokenizer.get_vocab()) or 1


def create_app(model_path: str, name: str, prompt_style: str = "alpaca", *, api_key: str | None = None,
               max_tokens: int = 512, max_body_bytes: int = 1_000_000, max_batch: int = 16,
               batch_wait_ms: float = 5, device: str = "cpu", max_adapters: int = 0,
               adapters: dict[str, str] | None = None, base_revision: str | None = None,
               adapter_roots: list[str] | None = None, adapter_state: str | None = None) -> FastAPI:
    model, tokenizer = inference.load_model(model_path, device)
    context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    token_chars = longest_token_chars(tokenizer)
    lora = None
    if max_adapters:
        if not base_revision:
            raise ValueError("serving adapters needs the base model's revision (--base-revision: "
                             "tasks.models.local.revision_of of the model folder), which each adapter must match")
        lora = Adapters(model, name, base_revision, max_adapters, adapter_roots or [str(state_dir())])
        for adapter_name, path in (adapters or {}).items():
            lora.add(lora.check(adapter_name, path))
        if adapter_state:  # a restart by the supervisor (tasks.servers.supervise) comes back with its adapters
            for why in lora.keep_in(Path(adapter_state), restarted=int(env(RESTARTS_ENV) or 0) > 0):
                print(f"fineflow relay: an adapter of the restarted server was left out: {why}", flush=True)
    batcher = Batcher(model, tokenizer, max_batch=max_batch, wait_ms=batch_wait_ms, adapters=lora)
    # Events from the batcher's thread wait here and reach their requests' queues together, one wake-up of the
    # event loop per decoding step (sixteen streams would otherwise wake it sixteen times a token).
    outbox: deque = deque()
    loop_of: dict = {}

    def deliver() -> None:
        while outbox:
            events, item = outbox.popleft()
            events.put_nowait(item)

    def flush() -> None:
        if outbox and "loop" in loop_of:
            loop_of["loop"].call_soon_threadsafe(deliver)

    batcher.on_step = flush
    app = FastAPI(title=f"fineflow relay: {name}")
    app.state.batcher = batcher
    created = int(time.time())

    guard(app, api_key, max_body_bytes)

    def adapter_of(req: Sampling) -> str | None:
        """The adapter ``model`` names (None: the base); without adapters ``model`` is not checked."""
        if lora is None:
            return None
        try:
            return lora.row_name(req.model)
        except AdapterError as e:
            raise ApiError(e.status, e.message, "model") from e

    def gen_requests(req: Sampling, prompts: list[str]) -> list[GenRequest]:
        """Each prompt as a request for the batcher, after every bound is checked: nothing reaches the model
        before the whole request is known to fit."""
        adapter = adapter_of(req)
        if not 1 <= req.max_tokens <= max_tokens:
            raise ApiError(400, f"max_tokens must be between 1 and {max_tokens}", "max_tokens")
        out = []
        for text in prompts:
            text = inference.model_text(tokenizer, prompt_style, text)
            room = context - req.max_tokens
            if len(text) > room * token_chars:
                raise ApiError(400, f"prompt is over {room} tokens, the model's context of {context} less "
                                    f"max_tokens {req.max_tokens}", "prompt")
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if not ids or len(ids) > room:
                raise ApiError(400, "prompt is empty" if not ids else
                               f"prompt is {len(ids)} tokens; with max_tokens {req.max_tokens} it is over the "
                               f"model's context of {context}", "prompt")
            out.append(GenRequest(ids, req.max_tokens, req.temperature, req.top_p, req.seed, req.stops(),
                                  req.ignore_eos, adapter))
        return out

    async def run(reqs: list[GenRequest]):
        """Submit ``reqs`` and yield ``(index, piece)`` as text arrives, then ``(index, None)`` when each ends."""
        loop_of["loop"], events = asyncio.get_running_loop(), asyncio.Queue()
        for i, r in enumerate(reqs):
            r.on_event = lambda kind, value, i=i: outbox.append((events, (i, kind, value)))
            batcher.submit(r)
        pending = len(reqs)
        try:
            while pending:
                i, kind, value = await events.get()
                if kind == "error":
                    if isinstance(value, AdapterError):  # its adapter was unloaded, or is not loadable now
                        raise ApiError(value.status, value.message, "model")
                    raise ApiError(500, f"generation failed: {value}")
                pending -= kind == "done"
                yield i, (value if kind == "text" else None)
        finally:  # the client went away (or the answer is complete): no more work for these
            for r in reqs:
                r.cancelled = True

    def usage(reqs: list[GenRequest]) -> dict:
        prompt, completion = sum(len(r.prompt_ids) for r in reqs), sum(r.completion_tokens for r in reqs)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def respond(req: Sampling, reqs: list[GenRequest], kind: str, shape):
        """The whole answer, or (``stream``) server-sent events: one chunk per piece of text, a last one per
        choice with its finish reason, the usage if asked for, then ``[DONE]``."""
        rid, now = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:12]}", int(time.time())
        head = {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion", "created": now,
                "model": reqs[0].adapter or name}
        if not req.stream:
            async for _ in run(reqs):
                pass
            return {**head, "choices": [{"index": i, **shape(r.text, None), "finish_reason": r.finish_reason}
                                        for i, r in enumerate(reqs)], "usage": usage(reqs)}
        chunk = {**head, "object": "chat.completion.chunk" if kind == "chat" else "text_completion"}

        async def events():
            if kind == "chat":
                for i in range(len(reqs)):
                    yield sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                     "finish_reason": None}]})
            try:
                async for i, piece in run(reqs):
                    end = reqs[i].finish_reason if piece is None else None
                    yield sse({**chunk, "choices": [{"index": i, **shape(piece or "", True), "finish_reason": end}]})
            except ApiError as e:  # the status is sent already: the error goes in the stream
                yield sse({"error": {"message": e.message, "type": "server_error"}})
            if req.stream_options and req.stream_options.include_usage:
                yield sse({**chunk, "choices": [], "usage": usage(reqs)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/health")
    def health():
        return {"status": "ok", "model": name}

    @app.get("/v1/models")
    def models():
        listed = [{"id": name, "object": "model", "created": created, "owned_by": "fineflow"}]
        for adapter in (list(lora.known.values()) if lora else []):  # a copy: the batcher's thread changes it
            listed.append({"id": adapter.name, "object": "model", "created": created, "owned_by": "fineflow",
                           "parent": name, "root": adapter.path})
        return {"object": "list", "data": listed}

    adapter_routes(app, lora, batcher, name)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise ApiError(400, "prompt must not be an empty list", "prompt")
        return await respond(req, gen_requests(req, prompts), "text", lambda text, delta: {"text": text})

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        if not any(m.role == "user" for m in req.messages):
            raise ApiError(400, "messages must contain a user message", "messages")
        record = {"messages": [m.model_dump() for m in req.messages]}
        prompt = inference.render_prompt(prompt_style, record, tokenizer)
        return await respond(req, gen_requests(req, [prompt]), "chat", lambda text, delta: (
            {"delta": {"content": text}} if delta else {"message": {"role": "assistant", "content": text}}))

    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="fineflow-model")
    parser.add_argument("--prompt-style", default="alpaca")
    parser.add_argument("--max-tokens", type=int, default=512, help="the largest max_tokens a request may ask for")
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000)
    parser.add_argument("--max-batch", type=int, default=16, help="requests decoded together at most")
    parser.add_argument("--batch-wait-ms", type=float, default=5, help="how long a batch waits for company")
    parser.add_argument("--threads", type=int, default=1, help="torch's threads for decoding")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the model decodes (auto: the first CUDA GPU when there is one)")
    parser.add_argument("--max-adapters", type=int, default=0,
                        help="LoRA adapters kept in memory at most (0: the server serves no adapters)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="an adapter to load at start (with --max-adapters)")
    parser.add_argument("--adapter-root", action="append", default=[],
                        help="a folder adapters may be loaded from (default: $FINEFLOW_HOME)")
    parser.add_argument("--adapter-state", help="with --max-adapters: a file the server keeps its adapters in, so "
                        "that a restart by its supervisor brings them back")
    parser.add_argument("--base-revision", help="with --max-adapters: the model's revision, which an adapter's "
                                                "recorded base revision must equal")
    return parser.parse_args(argv)


def server(argv: list[str] | None = None) -> uvicorn.Server:
    """The server for the command line ``argv`` (the key from ``FINEFLOW_API_KEY``), not yet running."""
    args = parse_args(argv)
    key = required_key(args.host)
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here (use --device cpu or auto)")
    adapters: dict[str, str] = {}
    for given in args.adapter:
        adapter_name, _, path = given.partition("=")
        if not adapter_name or not path or adapter_name in adapters:
            raise SystemExit(f"--adapter {given!r}: expected NAME=PATH, each NAME once")
        adapters[adapter_name] = path
    if adapters and not args.max_adapters:
        raise SystemExit("--adapter needs --max-adapters N (how many adapters may stay in memory)")
    if args.max_adapters and not args.base_revision:
        raise SystemExit("--max-adapters needs --base-revision (the model's revision, which adapters must match)")
    try:
        app = create_app(args.model, args.name, args.prompt_style, api_key=key, max_tokens=args.max_tokens,
                         max_body_bytes=args.max_body_bytes, max_batch=args.max_batch,
                         batch_wait_ms=args.batch_wait_ms, device=device, max_adapters=args.max_adapters,
                         adapters=adapters, base_revision=args.base_revision, adapter_roots=args.adapter_root,
                         adapter_state=args.adapter_state)
    except AdapterError as e:
        raise SystemExit(f"--adapter: {e.message}") from e
    print(f"fineflow relay: {args.name} on {args.host}:{args.port} ({device}), API key "
          f"{'required' if key else 'OFF (loopback only)'}, batches of up to {args.max_batch}", flush=True)
    return uvicorn_server(app, args.host, args.port)


def main(argv: list[str] | None = None) -> None:
    # pragma: no mutate start (runs only in the server process, which tests/component/test_relay.py starts and
    # queries; a mutation tester sees in-process calls only.)
    torch.set_num_threads(parse_args(argv).threads)
    server(argv).run()
    # pragma: no mutate end


if __name__ == "__main__":
    main()
