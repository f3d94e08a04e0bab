"""Ports and the one HTTP health probe, for the stack, the endpoints and the servers (standard library only: the
servers that import it run in other frameworks' environments)."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.request
from collections.abc import Callable

LOOPBACK = ("127.0.0.1", "localhost", "::1")  # the addresses a server without an API key may bind


# Ports this process handed out lately: a server given one may still be starting, so the port looks free, and
# handing it out again started two services on one port (a test stack's SeaweedFS master and MLflow).
_GIVEN: dict[int, float] = {}
_GIVEN_FOR_S = 600.0
_LOCK = threading.Lock()


def free_ports(n: int, twin_offset: int = 0) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1, none handed out by this process in the last 10 minutes. They are held
    bound together while chosen, so the system cannot give one twice; with ``twin_offset`` each ``port +
    twin_offset`` is free too and distinct from every port chosen (SeaweedFS serves gRPC on its HTTP port + 10000)."""
    with _LOCK:
        now = time.monotonic()
        for port, at in list(_GIVEN.items()):
            if now - at > _GIVEN_FOR_S:
                del _GIVEN[port]
        chosen: list[int] = []
        taken: set[int] = set(_GIVEN)  # chosen ports, their twins and what was handed out lately
        held: list[socket.socket] = []
        try:
            for _ in range(50 * n + 100):  # bounded: a machine out of ports is an error, not a hang
                if len(chosen) == n:
                    break
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
                twin = port + twin_offset if twin_offset else None
                if port in taken or (twin is not None and (twin >= 65536 or twin in taken or not port_free(twin))):
                    continue
                chosen.append(port)
                taken.update({port} if twin is None else {port, twin})
        finally:
            for s in held:
                s.close()
        if len(chosen) < n:
            raise OSError(f"no {n} free ports on 127.0.0.1 (found {len(chosen)})")
        _GIVEN.update(dict.fromkeys(taken - set(_GIVEN), now))  # the twins too: they are their servers' as well
        return chosen


def free_port(twin_offset: int = 0) -> int:
    """A free port on 127.0.0.1 (``free_ports``: never one this process handed out lately)."""
    return free_ports(1, twin_offset)[0]


# What a server says when its port was taken: uvicorn's and Ray's words, and SeaweedFS's.
PORT_TAKEN = ("address already in use", "is not available")


def lost_port_race(text: str) -> bool:
    """Whether a server's error or log tail says its port was taken (another process bound it first)."""
    return any(words in text.lower() for words in PORT_TAKEN)


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
