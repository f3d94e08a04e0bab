"""Small servers for the tests that drive an ASGI app over real HTTP: an app served by uvicorn in a thread, a
target that says who answered, the routers' test key."""

from __future__ import annotations

import json
from contextlib import contextmanager

from tasks import net

KEY = "ff-router-test-key"  # the key the unit tests' routers are created with


@contextmanager
def served(app):
    """``app`` served by uvicorn on a free port in a thread, for the block; yields its URL."""

    import uvicorn

    port = net.free_port()
    with running(uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def running(server):
    """A uvicorn server run in a thread for the block, once it has started."""
    import threading
    import time

    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def app_answering(who: str, seen: list[dict] | None = None, status: int = 200):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def answer(request):
        body = json.loads(await request.body() or b"{}")
        if seen is not None:
            seen.append(body)
        return JSONResponse({"who": who, "prompt": body.get("prompt")}, status)

    return Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "POST"])])
