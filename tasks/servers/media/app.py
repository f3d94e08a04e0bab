"""The media server: one engine of ``tasks.servers.media.engines`` behind HTTP.

    FINEFLOW_API_KEY=... python -m tasks.servers.media.app --engine ocr --model DIR --port 8000 [--host 127.0.0.1]

Routes: ``GET /health`` (open; 200 once the model is loaded) and ``POST /generate`` with ``{"inputs": ...}``
(text, a file path, a ``data:`` URL, a list of them or an encoded query, as the engine takes), answered with the
engine's output as plain text (text, or an encoded query whose files are ``data:`` URLs); the engine's own
routes (``FastapiApp``: ``GET /info``, the model's files). With ``FINEFLOW_API_KEY`` set, every route but
``/health`` needs ``Authorization: Bearer <key>``; without it the server binds only a loopback address. Each
request is logged (stderr, and ``--log-dir``). A model folder that lacks the engine's weights stops the server
before it listens (exit 3), the message naming the model.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import sys
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse

from tasks.servers.auth import required_key
from tasks.servers.media.base import MediaEngine, MissingModelError
from tasks.servers.media.engines import ENGINES
from tasks.servers.media.files import MediaInputError
from tasks.servers.media.routes import FastapiApp

log = logging.getLogger("fineflow.media")
MISSING_MODEL_EXIT = 3


def create_app(engine: MediaEngine, *, api_key: str | None = None, max_body_bytes: int = 64_000_000) -> FastAPI:
    app = FastAPI(title=f"fineflow {engine.name}")
    lock = threading.Lock()  # one request at a time per model: the runtimes are not re-entrant
    served = {"requests": 0, "pid": os.getpid()}

    def run(inputs) -> str:
        with lock:
            return engine(inputs)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        """Every route but ``/health`` needs the key (the engine's own ``FastapiApp`` routes too)."""
        given = request.headers.get("authorization", "")
        if api_key and request.url.path != "/health" and not hmac.compare_digest(given, f"Bearer {api_key}"):
            return JSONResponse({"error": "a valid API key is required (Authorization: Bearer <key>)"}, 401)
        return await call_next(request)

    @app.get("/health")
    def health():
        return {"status": "ok", "engine": engine.name, "task": engine.task, "model": str(engine.model_dir), **served}

    @app.post("/generate")
    async def generate(request: Request):
        body = await request.body()
        if len(body) > max_body_bytes:
            return JSONResponse({"error": f"request body of {len(body)} bytes is over {max_body_bytes}"}, 413)
        try:
            payload = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON: send {\"inputs\": ...}"}, 400)
        started = time.monotonic()
        try:
            out = await run_in_threadpool(run, payload)
        except (MediaInputError, ValueError) as e:
            log.info("POST /generate 400 %s", e)
            return JSONResponse({"error": str(e)}, 400)
        served["requests"] += 1
        seconds = time.monotonic() - started
        log.info("POST /generate 200 %.3fs, %d characters out", seconds, len(out))
        return PlainTextResponse(out, headers={"X-Fineflow-Seconds": f"{seconds:.3f}",
                                               "X-Fineflow-Pid": str(os.getpid())})

    FastapiApp.mount(app, engine)  # the engine's own routes (GET /info)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tasks.servers.media.app", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True, choices=sorted(ENGINES))
    p.add_argument("--model", required=True, help="the model folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-body-bytes", type=int, default=64_000_000)
    p.add_argument("--log-dir", help="also write the request log to <dir>/<engine>-<port>.log")
    p.add_argument("--trust-remote-code", action="store_true", help="let the model's own code run when it loads")
    return p.parse_args(argv)


def setup_logging(log_dir: str | None, name: str) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(log_dir, f"{name}.log")))
    for h in handlers:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(h)
    log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    api_key = required_key(args.host)
    setup_logging(args.log_dir, f"{args.engine}-{args.port}")
    try:
        engine = ENGINES[args.engine](args.model)
        engine.trust_remote_code = args.trust_remote_code
    except MissingModelError as e:
        print(f"missing model: {e}", file=sys.stderr, flush=True)
        sys.exit(MISSING_MODEL_EXIT)
    print(f"loading {engine.name} ({engine.task}) from {engine.model_dir} ...", flush=True)
    try:
        engine.load()
    except ImportError as e:
        print(f"{engine.name} cannot load: {e} (its library is not installed in {sys.prefix})", file=sys.stderr)
        sys.exit(MISSING_MODEL_EXIT)
    app = create_app(engine, api_key=api_key, max_body_bytes=args.max_body_bytes)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
