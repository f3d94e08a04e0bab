"""Running endpoints: started detached so they outlive the flow run, listed, stopped.

Each endpoint is a process group recorded in ``$FINEFLOW_HOME/endpoints/<name>.json``.

    python -m tasks.deploy.endpoints list
    python -m tasks.deploy.endpoints stop NAME
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pydantic import BaseModel

from tasks import launchers
from tasks.core import Command
from tasks.masking import redact_text, show_argv
from tasks.settings import state_dir


class Endpoint(BaseModel):
    name: str
    url: str
    pid: int
    backend: str
    argv: list[str]
    model_path: str
    log_path: str
    started_at: float
    api_key_file: str | None = None  # where the key it requires is kept (never the key itself)
    restarts_file: str | None = None  # the supervisor's record of restarts after a crash
    relaunch: dict | None = None  # how to serve it again: the pipeline's deploy section and prompt style

    def restarts(self) -> int:
        path = Path(self.restarts_file) if self.restarts_file else None
        return len(json.loads(path.read_text())) if path and path.exists() else 0

    def alive(self) -> bool:
        return group_alive(self.pid)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=3) as resp:
                return resp.status == 200
        except Exception:
            return False


def free_port() -> int:
    """A free port whose gRPC twin (+10000, SeaweedFS's convention) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def group_alive(pgid: int) -> bool:
    """Whether the process group's leader still runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return Path(f"/proc/{pgid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return True  # no /proc (macOS): trust the signal


def _registry() -> Path:
    path = state_dir() / "endpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path


def start(name: str, command: Command, backend: str, model_path: str, api_key_file: str | None = None,
          restarts: int = 3) -> Endpoint:
    """Run ``command``: every argv but the last to the end (preparation), then the last one, the server,
    detached in its own session with ``command.env`` under ``tasks.deploy.supervise``; wait until
    ``command.checker`` passes (up to ``command.ready_timeout_s``). A server that exits or never gets ready is
    stopped, and the error holds the tail of its log. Once ready, a server that dies is restarted, up to
    ``restarts`` times in ten minutes (recorded in ``restarts_file``)."""
    log_path = state_dir() / "logs" / f"endpoint-{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if len(command.argvs) > 1:
        prepare = Command(command.argvs[:-1], env=command.env)
        launchers.local(log_path=log_path).launch(prepare, name=f"endpoint {name}")
    argv = command.argvs[-1]
    record, armed = _registry() / f"{name}.restarts.json", _registry() / f"{name}.armed"
    record.unlink(missing_ok=True)
    armed.unlink(missing_ok=True)
    supervised = [sys.executable, "-m", "tasks.deploy.supervise", "--restarts", str(restarts), "--record", str(record),
                  "--armed", str(armed), "--", *argv]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(supervised, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**launchers.child_environment(), **command.env})
    ep = Endpoint(name=name, url=str(command.return_value), pid=proc.pid, backend=backend, argv=argv,
                  model_path=model_path, log_path=str(log_path), started_at=time.time(),
                  api_key_file=api_key_file, restarts_file=str(record))
    ready = command.checker or ep.healthy
    deadline = time.monotonic() + command.ready_timeout_s
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(ep.pid)
            why = f"exited with code {proc.returncode}" if proc.poll() is not None else \
                f"not ready after {command.ready_timeout_s:.0f}s"
            tail = redact_text(log_path.read_text(errors="replace")[-2000:])
            raise RuntimeError(f"endpoint {name} failed its health check at {ep.url} ({why}): "
                               f"`{show_argv(argv)}`; log {log_path}:\n{tail}")
        time.sleep(0.5)
    armed.touch()  # ready once: from now on a crash is restarted
    (_registry() / f"{name}.json").write_text(ep.model_dump_json(indent=1))
    return ep


def get(name: str) -> Endpoint | None:
    path = _registry() / f"{name}.json"
    return Endpoint.model_validate_json(path.read_text()) if path.exists() else None


def list_endpoints() -> list[Endpoint]:
    return [Endpoint.model_validate_json(p.read_text()) for p in sorted(_registry().glob("*.json"))
            if not p.name.endswith(".restarts.json")]


def stop_process(pid: int, timeout_s: float = 15) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not group_alive(pid):
            return
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)


def stop(name: str) -> bool:
    ep = get(name)
    if ep is None:
        return False
    stop_process(ep.pid)
    for suffix in (".json", ".restarts.json", ".armed"):
        (_registry() / f"{name}{suffix}").unlink(missing_ok=True)
    return True


def stop_all() -> None:
    for ep in list_endpoints():
        stop(ep.name)
        print(f"stopped endpoint {ep.name}")


def main() -> None:
    if sys.argv[1:2] == ["stop"] and len(sys.argv) == 3:
        sys.exit(0 if stop(sys.argv[2]) else f"no endpoint named {sys.argv[2]}")
    for ep in list_endpoints():
        print(describe(ep))


def describe(ep: Endpoint) -> str:
    """One line for people: name, URL, engine, pid, health, restarts, log."""
    health = "healthy" if ep.healthy() else "alive, not answering" if ep.alive() else "dead"
    return f"{ep.name}\t{ep.url}\t{ep.backend}\tpid={ep.pid}\t{health}\trestarts={ep.restarts()}\tlog={ep.log_path}"


if __name__ == "__main__":
    main()
