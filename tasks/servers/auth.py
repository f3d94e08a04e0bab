"""The API key a server requires: the one rule every fineflow server applies before it listens."""

from __future__ import annotations

from tasks.net import LOOPBACK
from tasks.settings import env


def required_key(host: str) -> str | None:
    """The key every request but ``/health`` must bring (``FINEFLOW_API_KEY``, put in the server's environment by
    the engine, never its argv). Without one the server may bind only a loopback address: anything else exits."""
    key = env("FINEFLOW_API_KEY")
    if key is None and host not in LOOPBACK:
        raise SystemExit(f"refusing to serve on {host} without an API key: set FINEFLOW_API_KEY, or bind 127.0.0.1")
    return key
