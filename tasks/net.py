"""Ports and the one HTTP health probe, for the stack, the endpoints and the servers (standard library only: the
servers that import it run in other frameworks' environments)."""

from __future__ import annotations

import http.client
import socket
import urllib.request
from collections.abc import Callable

LOOPBACK = ("127.0.0.1", "localhost", "::1")  # the addresses a server without an API key may bind


def free_port(twin_offset: int = 0) -> int:
    """A free port on 127.0.0.1; with ``twin_offset``, one whose ``port + twin_offset`` is free too (SeaweedFS
    serves gRPC on its HTTP port + 10000)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not twin_offset:
            return port
        if port + twin_offset < 65536 and port_free(port + twin_offset):
            return port


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def probe(url: str, timeout_s: float = 3) -> str | None:
    """None when ``url`` answers 200 within ``timeout_s``, else why not (a status, a network error). Only the
    network and the server can make it fail: a malformed URL is a bug and raises."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, an HTTP error status
        return f"{type(e).__name__}: {e}"


def http_ok(url: str, timeout_s: float = 3) -> bool:
    """Whether ``url`` answers 200 within ``timeout_s`` (``probe``)."""
    return probe(url, timeout_s) is None


def ready(url: str, timeout_s: float = 3) -> Callable[[], bool]:
    """A readiness probe: ``http_ok(url)`` as a check to poll."""
    return lambda: http_ok(url, timeout_s)
