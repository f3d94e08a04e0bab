"""A connection must send a whole request head in time (tasks.servers.header_deadline, used by the router and the
built-in servers): half-sent heads are closed, on new and on kept-alive connections; a slow response, or a head
sent in pieces within the time, is served."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI

from tasks import net
from tasks.servers import header_deadline
from tasks.servers.header_deadline import HeaderDeadline

DEADLINE_S = 1.0


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(header_deadline, "HEADER_TIMEOUT_S", DEADLINE_S)
    app = FastAPI()

    @app.get("/")
    async def root():
        return {"ok": True}

    @app.get("/slow")
    async def slow():
        await asyncio.sleep(DEADLINE_S * 2.5)
        return {"slow": True}

    port = net.free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=HeaderDeadline,
                                        timeout_keep_alive=30))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    yield port
    srv.should_exit = True
    thread.join(timeout=10)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S * 6)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reading whatever it sends first)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def get(sock: socket.socket, path: str = "/") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def test_half_sent_heads_are_closed_and_others_still_served(server):
    started = time.monotonic()
    half = [connect(server) for _ in range(20)]
    for i, sock in enumerate(half):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"GE")
    with connect(server) as ok:
        assert b"200 OK" in get(ok)
    assert all(closed_within(sock, DEADLINE_S * 3) for sock in half)
    assert time.monotonic() - started < DEADLINE_S * 4
    silent = connect(server)  # connected, sent nothing at all
    assert closed_within(silent, DEADLINE_S * 3)


def test_a_kept_alive_connection_gets_the_deadline_again_after_each_response(server):
    with connect(server) as sock:
        assert b"200 OK" in get(sock)
        time.sleep(DEADLINE_S * 0.5)
        assert b"200 OK" in get(sock)  # a second request in time on the same connection
        sock.sendall(b"GET / HTTP/1.1\r\nHo")
        assert closed_within(sock, DEADLINE_S * 3)


def test_a_slow_response_and_a_head_sent_in_pieces_in_time_are_served(server):
    with connect(server) as sock:
        assert b'{"slow":true}' in get(sock, "/slow")  # longer than the deadline: the head came in time
    with connect(server) as sock:
        for piece in (b"GET / HT", b"TP/1.1\r\nHost:", b" x\r\n\r\n"):
            sock.sendall(piece)
            time.sleep(DEADLINE_S * 0.25)
        assert b"200 OK" in sock.recv(4096)
