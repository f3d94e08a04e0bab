"""One stable URL per registered model and alias: a small reverse proxy to the endpoint that holds the alias.

    python -m tasks.servers.router --state $FINEFLOW_HOME/routers/MODEL@ALIAS.json [--host 127.0.0.1]

The state file says where to listen (``port``, chosen once and kept, so the URL survives restarts) and where to
forward (``target``, the endpoint of the version that holds the alias, ``version``, ``api_key``: whether that
endpoint requires the key, and ``adapter``: for a LoRA adapter on a shared base endpoint, the model name each JSON
request's ``model`` is set to; ``shadow``: a candidate a share of requests is copied to, ``tasks.servers.shadow``).
``switch()`` rewrites the target atomically; the router reads it again when the file
changes, so a promotion or a rollback moves new requests at once while those in flight finish on the endpoint they
started on. ``GET /router/status`` counts them per target (``drain()`` waits on it before the old endpoint is
stopped); ``GET /router/health`` is the router's own readiness. With ``traffic`` in the state (the version's
``deploy.traffic``) the router records a share of requests and answers to the bucket and answers
``POST /v1/feedback`` itself (``tasks.servers.traffic``). Everything else, ``/health`` included, is
forwarded as it is, the Authorization header with it.

The router is bounded before it reads: with the key in its environment (``FINEFLOW_API_KEY``), a request for an
endpoint that requires it and ``/router/status`` need ``Authorization: Bearer <key>`` before any of the body is
read (``/health`` and ``/router/health`` stay open); a declared length over ``MAX_BODY`` is refused unread and a
streamed body is cut at it; idle connections close after a few seconds and connections beyond
``MAX_CONNECTIONS`` get 503.
"""

from __future__ import annotations

import argparse
import hmac
import json
import time
from collections import Counter
from pathlib import Path

from tasks.files import write_atomic
from tasks.servers.header_deadline import HeaderDeadline
from tasks.servers.shadow import MAX_KEPT_BYTES, Shadow, kept
from tasks.servers.traffic import FEEDBACK_PER_S, HEADER, MAX_FEEDBACK_BYTES, Recorder, given_feedback
from tasks.settings import env

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}
MAX_BODY = 8_000_000  # the endpoints bound bodies far lower; this only keeps the router itself bounded
MAX_CONNECTIONS = 512
OPEN_PATHS = ("/health",)  # forwarded without the key: readiness probes
UPSTREAM_TIMEOUT_S = 600  # one generation may take minutes on a CPU; connecting to a live endpoint does not
CONNECT_TIMEOUT_S = 5
KEEP_ALIVE_S = 5  # an idle client connection is closed after this
POLL_S = 0.2  # how often drain() asks the router again


def read_state(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_state(path: Path, state: dict) -> None:
    """Atomically: a router never reads half a file."""
    write_atomic(path, json.dumps(state, indent=1))


def target_key(state: dict) -> str | None:
    """What the router forwards to: the target, and the adapter on it (a shared base serves many)."""
    target, adapter = state.get("target"), state.get("adapter")
    return f"{target}#{adapter}" if target and adapter else target


def with_model(body: bytes, model: str) -> bytes:
    """A JSON object body with its ``model`` set to ``model`` (the adapter the alias serves); another body as it
    is (the endpoint refuses what it cannot read)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    return json.dumps({**data, "model": model}).encode() if isinstance(data, dict) else body


def error(status: int, message: str):
    from starlette.responses import JSONResponse

    kind = {401: "authentication_error", 502: "server_error", 503: "server_error"}.get(status, "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind}}, status)


def bucket_put(key: str, data: bytes, python: str = "", bucket: str = "") -> None:
    """One object written to ``bucket`` (default: the stack's; what the traffic recorder writes with, from its own
    thread): through ``tasks.services.storage put`` in a child process run by ``python`` (default: this one's),
    so the router imports nothing of S3."""
    import base64
    import subprocess
    import sys

    from tasks.settings import Settings

    line = f"{key}\t{base64.b64encode(data).decode()}\n"
    done = subprocess.run([python or sys.executable, "-m", "tasks.services.storage", "put",
                           f"s3://{bucket or Settings.load().s3_bucket}"], input=line, capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise OSError(f"writing {key} to the bucket failed: {done.stderr.strip()[-500:]}")


def create_app(state_path: Path, api_key: str | None = None, put=bucket_put):
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    cache = {"mtime": None, "state": {}}
    inflight: Counter[str] = Counter()
    client = httpx.AsyncClient(timeout=httpx.Timeout(UPSTREAM_TIMEOUT_S, connect=CONNECT_TIMEOUT_S))
    shadow = Shadow(client, api_key)
    recorders: list[Recorder] = []  # made when a route first records traffic

    def recorder() -> Recorder:
        if not recorders:
            recorders.append(Recorder(str(state().get("model", "")).split("@")[0], put))
        return recorders[0]

    def state() -> dict:
        mtime = state_path.stat().st_mtime_ns if state_path.exists() else None
        if mtime != cache["mtime"]:
            cache["mtime"], cache["state"] = mtime, read_state(state_path)
        return cache["state"]

    def authorized(request: Request) -> bool:
        if api_key is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), api_key.encode())

    async def read_body(request: Request, limit: int | None = None) -> bytes | None:
        """The body, or None once it is over ``limit`` (MAX_BODY; declared or streamed): never more than that in
        memory."""
        limit = MAX_BODY if limit is None else limit
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return None
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return None
        return bytes(body)

    async def status(request: Request):
        if not authorized(request):
            return error(401, "a valid API key is required: Authorization: Bearer <key>")
        s = state()
        return JSONResponse({"target": s.get("target"), "version": s.get("version"), "model": s.get("model"),
                             "adapter": s.get("adapter"), "shadow": shadow.status(),
                             "traffic": recorders[0].status() if recorders else {},
                             "inflight": {k: v for k, v in inflight.items() if v}})

    async def health(request: Request):  # the router listens; whether a version is behind it is said too
        return JSONResponse({"status": "ok", "serving": bool(state().get("target"))})

    async def forward(request: Request):
        s = state()
        target, key = s.get("target"), target_key(s)
        if not target:
            return error(503, "no version is being served")
        if s.get("api_key", True) and request.url.path not in OPEN_PATHS and not authorized(request):
            return error(401, "a valid API key is required: Authorization: Bearer <key>")
        inflight[key] += 1  # from here: a drain waits for it while its body is still arriving
        mirror = shadow.take(s.get("shadow"), request.method, request.url.path)
        rid = recorder().take(s.get("traffic"), request.method, request.url.path) if s.get("traffic") else None
        started = time.monotonic()
        try:
            body = await read_body(request)
            if body is None:
                inflight[key] -= 1
                return error(413, f"request body over the limit of {MAX_BODY} bytes")
            sent = with_model(body, s["adapter"]) if s.get("adapter") and request.method == "POST" else body
            headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
            upstream = await client.send(client.build_request(
                request.method, f"{target}{request.url.path}", params=request.query_params, headers=headers,
                content=sent), stream=True)
        except httpx.HTTPError as e:
            inflight[key] -= 1
            return error(502, f"the endpoint at {target} did not answer: {e}")
        except BaseException:  # the client went away mid-body
            inflight[key] -= 1
            raise

        async def relay():
            answer = bytearray()  # what production answered, kept for a mirrored request's pair
            try:
                async for chunk in upstream.aiter_raw():
                    if (mirror or rid) and len(answer) < MAX_KEPT_BYTES:
                        answer += chunk
                    yield chunk
            finally:
                await upstream.aclose()
                inflight[key] -= 1
                try:  # after the answer: what goes wrong here is counted, never the client's
                    if mirror:
                        copy = with_model(body, s["shadow"]["adapter"]) if s["shadow"].get("adapter") else body
                        shadow.after(s["shadow"], request.url.path, headers, body, copy, {
                            "status": upstream.status_code, "latency_s": time.monotonic() - started,
                            "body": kept(bytes(answer))})
                    if rid:
                        recorder().record(s["traffic"], rid, str(s.get("version")), request.url.path, body,
                                          upstream.status_code, bytes(answer), time.monotonic() - started)
                except Exception:  # noqa: BLE001
                    (recorder().counts if rid else shadow.counts)["unrecorded"] += 1

        answer_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(relay(), status_code=upstream.status_code,
                                 headers={**answer_headers, **({HEADER: rid} if rid else {})})

    async def feedback(request: Request):
        s = state()
        if not authorized(request):
            return error(401, "a valid API key is required: Authorization: Bearer <key>")
        if not s.get("traffic"):
            return error(404, f"{s.get('model', 'this route')} records no traffic (deploy.traffic), so it takes no "
                              "feedback")
        if not recorder().allowed(request.headers.get("authorization", "") or str(request.client)):
            return error(429, "too much feedback: at most "
                              f"{FEEDBACK_PER_S:g} a second per key")
        given = given_feedback(await read_body(request, MAX_FEEDBACK_BYTES))
        if isinstance(given, tuple):
            return error(*given)
        if recorder().feedback(given, s["traffic"].get("mask_patterns", [])) is None:
            return error(404, f"request id {given.request_id} is not one this route recorded recently")
        return JSONResponse({"status": "recorded", "request_id": given.request_id})

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
    return Starlette(routes=[Route("/router/status", status), Route("/router/health", health),
                             Route("/v1/feedback", feedback, methods=["POST"]),
                             Route("/{path:path}", forward, methods=methods)])


def switch(state_path: Path, target: str, version: str, api_key: bool = True, adapter: str | None = None,
           traffic: dict | None = None) -> str | None:
    """Point the router at ``target`` (which requires the API key when ``api_key``), at its LoRA adapter
    ``adapter`` when given, recording its traffic as ``traffic`` says (``tasks.servers.traffic``; None: not);
    returns what it forwarded to before (``target_key``: what ``drain`` waits on)."""
    s = read_state(state_path)
    old = target_key(s)
    write_state(state_path, {**s, "target": target, "version": version, "api_key": api_key, "adapter": adapter,
                             "traffic": traffic})
    return old


def mirror_to(state_path: Path, shadow: dict | None) -> None:
    """Start mirroring a share of the router's live requests to a candidate (``tasks.servers.shadow``: the state's
    ``shadow``), or stop (None)."""
    s = read_state(state_path)
    write_state(state_path, {**{k: v for k, v in s.items() if k != "shadow"}, **({"shadow": shadow} if shadow else {})})


def drain(url: str, target: str, headers: dict[str, str] | None = None, timeout_s: float = 120) -> bool:
    """Wait until no request the router forwarded to ``target`` (a ``target_key``) is still running; False after
    ``timeout_s``. ``headers`` carry the key ``/router/status`` asks for."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not httpx.get(f"{url}/router/status", headers=headers,
                             timeout=CONNECT_TIMEOUT_S).json()["inflight"].get(target):
                return True
        except httpx.HTTPError:
            return True  # no router, nothing in flight through it
        time.sleep(POLL_S)
    return False


def server(argv: list[str] | None = None):
    """The router for the command line ``argv`` (the key from ``FINEFLOW_API_KEY``), on the state's port, not yet
    running."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    port = read_state(args.state)["port"]
    return uvicorn.Server(uvicorn.Config(
        create_app(args.state, env("FINEFLOW_API_KEY")), host=args.host, port=port, log_level="warning",
        timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONNECTIONS, http=HeaderDeadline))


def main(argv: list[str] | None = None) -> None:
    server(argv).run()  # pragma: no mutate (runs in the router process only; tests run server() in-process)


if __name__ == "__main__":
    main()
