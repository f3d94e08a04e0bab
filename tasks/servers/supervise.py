"""Keep a server running: restart it when it dies, a bounded number of times, and record each restart.

    python -m tasks.servers.supervise --restarts 3 --record endpoints/NAME.restarts.json -- SERVER ARGV...

``endpoints.start`` runs every server under this (in the server's process group, so stopping the endpoint
stops both). Once the server has been ready (``endpoints.start`` creates the ``--armed`` file then; a server
that fails before that fails its start, unrestarted), a server that exits on its own, crashed or killed, is
started again after a short pause, up to ``--restarts`` times within ``--window-s`` seconds; each restart is
appended to the record (time, exit code) and said in the log, and the server started again is told so
(``FINEFLOW_SERVER_RESTARTS``: how many times this supervisor restarted it; a server may take back state it kept).
A SIGTERM to the group is a stop, not a crash: the supervisor exits with the server.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks.settings import environ

RESTARTS_ENV = "FINEFLOW_SERVER_RESTARTS"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=3, help="restarts allowed within --window-s")
    parser.add_argument("--window-s", type=float, default=600)
    parser.add_argument("--record", type=Path, required=True, help="JSON file the restarts are written to")
    parser.add_argument("--armed", type=Path, required=True, help="restarts happen only once this file exists")
    parser.add_argument("server", nargs=argparse.REMAINDER, help="-- then the server's argv")
    args = parser.parse_args(argv)
    args.server = args.server[1:] if args.server[:1] == ["--"] else args.server
    if not args.server:
        parser.error("no server argv after --")
    return args


def restarts(record: Path) -> list[dict]:
    return json.loads(record.read_text()) if record.exists() else []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    restarted = 0
    while True:
        child = subprocess.Popen(args.server, env={**environ(), RESTARTS_ENV: str(restarted)})
        code = child.wait()
        if stopping:
            return 0
        if not args.armed.exists():
            return code or 1  # it never got ready: the start fails, with the server's own exit code
        history = restarts(args.record)
        recent = [r for r in history if r["at"] > time.time() - args.window_s]
        if len(recent) >= args.restarts:
            print(f"fineflow supervisor: server exited with code {code}; {len(recent)} restarts in the last "
                  f"{args.window_s:.0f}s already, giving up", flush=True)
            return code or 1
        history.append({"at": time.time(), "exit_code": code})
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(history))
        restarted += 1
        print(f"fineflow supervisor: server exited with code {code}; restart {len(recent) + 1} of "
              f"{args.restarts}", flush=True)
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
