"""Running endpoints on this machine: started detached so they outlive the flow run, listed, stopped.

Each endpoint is a process group (its server under ``tasks.servers.supervise``) recorded in
``$FINEFLOW_HOME/endpoints/<name>.json``, with how to start it again (``relaunch``).

    python -m tasks.serving.endpoints list
    python -m tasks.serving.endpoints stop NAME
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel

from tasks import files, launchers, net
from tasks.core import Command
from tasks.launchers import group_alive, stop_group
from tasks.masking import redact_text, show_argv
from tasks.services import keys
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
    serving: dict | None = None  # the serving platform it runs on (tasks.serving.platforms); None: this machine
    # A LoRA adapter on a shared base endpoint (tasks.serving.adapters): the model name it answers to there. Its
    # url is the base endpoint's (``base``); it has no process of its own (pid 0).
    adapter: str | None = None
    base: str | None = None
    # What a request carries to reach it, beside the key: a platform's routing (Ray Serve's multiplexed model id)
    route_headers: dict[str, str] = {}

    def restarts(self) -> int:
        path = Path(self.restarts_file) if self.restarts_file else None
        return len(json.loads(path.read_text())) if path and path.exists() else 0

    def headers(self) -> dict[str, str]:
        """What a request to it carries: the key, where it requires one, and the platform's routing headers."""
        return {**(keys.auth_headers() if self.api_key_file else {}), **self.route_headers}

    def alive(self) -> bool:
        return group_alive(self.pid) if self.pid > 0 else self.healthy()  # a platform's endpoint has no process here

    def healthy(self) -> bool:
        """It answers its health check; an adapter, also listed by its base (which loses it when restarted)."""
        if not net.http_ok(f"{self.url}/health"):
            return False
        return self.adapter is None or self.adapter in adapters_listed(self)


def adapters_listed(ep: Endpoint) -> list[str]:
    """The adapters the server at ``ep.url`` lists (``/v1/models``: the entries with a ``parent``); [] when it does
    not answer."""
    import httpx

    try:
        reply = httpx.get(f"{ep.url}/v1/models", headers=ep.headers(), timeout=10)
        reply.raise_for_status()
        return [m["id"] for m in reply.json()["data"] if m.get("parent")]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return []


def _registry() -> Path:
    path = state_dir() / "endpoints"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)  # records name pids, logs and key files: private
    return path


def start(name: str, command: Command, backend: str, model_path: str, api_key_file: str | None = None,
          relaunch: dict | None = None, restarts: int = 3) -> Endpoint:
    """Run ``command``: every argv but the last to the end (preparation), then the last one, the server,
    detached in its own session with ``command.env`` under ``tasks.servers.supervise``; wait until
    ``command.checker`` passes (up to ``command.ready_timeout_s``). A server that exits or never gets ready is
    stopped, and the error holds the tail of its log. Once ready, a server that dies is restarted, up to
    ``restarts`` times in ten minutes (recorded in ``restarts_file``). The record keeps ``relaunch``: how to serve
    the same model again."""
    log_path = state_dir() / "logs" / f"endpoint-{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if len(command.argvs) > 1:
        prepare = Command(command.argvs[:-1], env=command.env)
        launchers.local(log_path=log_path).launch(prepare, name=f"endpoint {name}")
    argv = command.argvs[-1]
    record, armed = _registry() / f"{name}.restarts.json", _registry() / f"{name}.armed"
    record.unlink(missing_ok=True)
    armed.unlink(missing_ok=True)
    supervised = [sys.executable, "-m", "tasks.servers.supervise", "--restarts", str(restarts), "--record", str(record),
                  "--armed", str(armed), "--", *argv]
    with files.open_private(log_path) as log:
        proc = subprocess.Popen(supervised, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**launchers.child_environment(), **command.env})
    ep = Endpoint(name=name, url=str(command.return_value), pid=proc.pid, backend=backend, argv=argv,
                  model_path=model_path, log_path=str(log_path), started_at=time.time(),
                  api_key_file=api_key_file, restarts_file=str(record), relaunch=relaunch)
    ready = command.checker or ep.healthy
    deadline = time.monotonic() + command.ready_timeout_s
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_group(ep.pid)
            why = f"exited with code {proc.returncode}" if proc.poll() is not None else \
                f"not ready after {command.ready_timeout_s:.0f}s"
            tail = redact_text(log_path.read_text(errors="replace")[-2000:])
            raise RuntimeError(f"endpoint {name} failed its health check at {ep.url} ({why}): "
                               f"`{show_argv(argv)}`; log {log_path}:\n{tail}")
        time.sleep(0.5)
    armed.touch()  # ready once: from now on a crash is restarted
    files.write_atomic(_registry() / f"{name}.json", ep.model_dump_json(indent=1))
    return ep


def get(name: str) -> Endpoint | None:
    path = _registry() / f"{name}.json"
    return Endpoint.model_validate_json(path.read_text()) if path.exists() else None


def list_endpoints() -> list[Endpoint]:
    return [Endpoint.model_validate_json(p.read_text()) for p in sorted(_registry().glob("*.json"))
            if not p.name.endswith(".restarts.json")]


def stop(name: str) -> bool:
    ep = get(name)
    if ep is None:
        return False
    if ep.pid > 0:  # pid 0 would be this process's own group
        stop_group(ep.pid)
    for suffix in (".json", ".restarts.json", ".armed"):
        (_registry() / f"{name}{suffix}").unlink(missing_ok=True)
    return True


def stop_all() -> None:
    """Every endpoint and router stopped, side by side: each is its own process group, and each may take a
    moment to finish what it is answering."""
    eps = list_endpoints()
    with ThreadPoolExecutor(max(1, min(16, len(eps))), thread_name_prefix="stop") as pool:
        for ep, _ in zip(eps, pool.map(lambda ep: stop(ep.name), eps)):
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
