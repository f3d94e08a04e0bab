"""One stable URL per registered model and alias: a small reverse proxy to the endpoint that holds the alias.

    python -m tasks.servers.router --state $FINEFLOW_HOME/routers/MODEL@ALIAS.json [--host 127.0.0.1]

The state file says where to listen (``port``, chosen once and kept, so the URL survives restarts) and where to
forward (``target``, the endpoint of the version that holds the alias, and ``version``). ``switch()`` rewrites
the target atomically; the router reads it again when the file changes, so a promotion or a rollback moves new
requests at once while those in flight finish on the endpoint they started on. ``GET /router/status`` counts
them per target (``drain()`` waits on it before the old endpoint is stopped); ``GET /router/health`` is the
router's own readiness. Everything else, ``/health`` included, is forwarded as it is, the Authorization
header with it: the endpoint behind checks the API key.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from tasks.files import write_atomic

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}
MAX_BODY = 8_000_000  # the endpoints bound bodies far lower; this only keeps the router itself bounded


def read_state(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_state(path: Path, state: dict) -> None:
    """Atomically: a router never reads half a file."""
    write_atomic(path, json.dumps(state, indent=1))


def create_app(state_path: Path):
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    cache = {"mtime": None, "state": {}}
    inflight: Counter[str] = Counter()
    client = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=5))

    def state() -> dict:
        mtime = state_path.stat().st_mtime_ns if state_path.exists() else None
        if mtime != cache["mtime"]:
            cache["mtime"], cache["state"] = mtime, read_state(state_path)
        return cache["state"]

    async def status(request: Request):
        s = state()
        return JSONResponse({"target": s.get("target"), "version": s.get("version"), "model": s.get("model"),
                             "inflight": {k: v for k, v in inflight.items() if v}})

    async def health(request: Request):
        return JSONResponse({"status": "ok" if state().get("target") else "no target"},
                            200 if state().get("target") else 503)

    async def forward(request: Request):
        target = state().get("target")
        if not target:
            return JSONResponse({"error": {"message": "no version is being served", "type": "server_error"}}, 503)
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"error": {"message": "request body too large", "type": "invalid_request_error"}},
                                413)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        inflight[target] += 1
        try:
            upstream = await client.send(client.build_request(
                request.method, f"{target}{request.url.path}", params=request.query_params, headers=headers,
                content=body), stream=True)
        except httpx.HTTPError as e:
            inflight[target] -= 1
            return JSONResponse({"error": {"message": f"the endpoint at {target} did not answer: {e}",
                                           "type": "server_error"}}, 502)

        async def relay():
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()
                inflight[target] -= 1

        return StreamingResponse(relay(), status_code=upstream.status_code,
                                 headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP})

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
    return Starlette(routes=[Route("/router/status", status), Route("/router/health", health),
                             Route("/{path:path}", forward, methods=methods)])


def switch(state_path: Path, target: str, version: str) -> str | None:
    """Point the router at ``target``; returns the target it had."""
    s = read_state(state_path)
    old = s.get("target")
    write_state(state_path, {**s, "target": target, "version": version})
    return old


def drain(url: str, target: str, timeout_s: float = 120) -> bool:
    """Wait until no request the router forwarded to ``target`` is still running; False after ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not httpx.get(f"{url}/router/status", timeout=5).json()["inflight"].get(target):
                return True
        except httpx.HTTPError:
            return True  # no router, nothing in flight through it
        time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    port = read_state(args.state)["port"]
    uvicorn.run(create_app(args.state), host=args.host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
