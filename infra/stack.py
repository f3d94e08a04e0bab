"""The embedded local stack: SeaweedFS S3, MLflow, a Prefect server and one worker.

    python -m infra.stack up        # start what is not running (idempotent)
    python -m infra.stack status    # each service: pid, url, healthy or not
    python -m infra.stack down      # stop everything, state is kept
    eval "$(python -m infra.stack env)"   # point the prefect/mlflow CLIs at it

Every service binds 127.0.0.1 (``FINEFLOW_STACK_HOST`` moves them to another address of this machine: the
two-host tests bind a private bridge's), logs to ``$FINEFLOW_HOME/logs/<service>.log`` and
is health-checked before ``up`` returns.  Ports default to the values below and
can be moved with ``--ports free`` (tests do this) or FINEFLOW_*_PORT variables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra import credentials, ports as stack_ports, ray_cluster
from infra.missed_runs import MISSED_FLOWS, SCHEDULE_AHEAD_S, drop_missed_runs
from tasks import net
from tasks.files import make_private
from tasks.launchers import group_alive, stop_group
from tasks.net import http_ok
from tasks.settings import (MLFLOW_USER, PREFECT_USER, Settings, env, environ, secret_file, state_dir,
                            telemetry_env)

WORK_POOL = "fineflow-local"
BUCKET = "fineflow"
BIN = Path(sys.executable).parent
HEARTBEAT_S = 30  # flow run heartbeats (Prefect's minimum)

STOP_GRACE_S = 20  # a service still running this long after its stop signal is killed (and ``down`` says so)


@dataclass
class Service:
    name: str
    argv: list[str]
    health_url: str
    env: dict[str, str]
    stop_signal: int = signal.SIGTERM
    timeout_s: float = 90.0
    listens_on: int | None = None  # ready once this port takes connections (a service without a health URL)


def stack_host(home: Path) -> str:
    """The address every service binds: chosen at the first ``up`` (``FINEFLOW_STACK_HOST``), kept in stack.json."""
    stack_file = home / "stack.json"
    if stack_file.exists():
        return json.loads(stack_file.read_text()).get("host", "127.0.0.1")
    return env("FINEFLOW_STACK_HOST")


def services(home: Path, ports: dict[str, int]) -> list[Service]:
    creds = credentials.s3_identity(home)
    host = stack_host(home)
    s3_url = f"http://{host}:{ports['s3']}"
    quiet = telemetry_env()  # no usage telemetry from the services or what they start (FINEFLOW_TELEMETRY=on)
    s3_env = {**quiet, "AWS_ACCESS_KEY_ID": creds["accessKey"], "AWS_SECRET_ACCESS_KEY": creds["secretKey"],
              "MLFLOW_S3_ENDPOINT_URL": s3_url}
    mlflow_env = {**s3_env, **credentials.mlflow_server_env(home),
                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # 8 job consumers fineflow never uses
    credentials.seaweed_security(home, host)  # read by weed from its working directory, home
    prefect_env = {**quiet, **credentials.prefect_client_env(home), "PREFECT_HOME": str(home / "prefect"),
                   "PREFECT_API_URL": f"http://{host}:{ports['prefect']}/api",
                   "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_LOGGING_LEVEL": "INFO",
                   # Flow runs beat every 30 s; infra.demo's crash automation marks one that stops Crashed.
                   "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),
                   # Held concurrency slots survive a server restart (the default in-memory store leaks them).
                   "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
                   "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": f"PT{SCHEDULE_AHEAD_S}S",
                   "FINEFLOW_HOME": str(home)}
    mlflow_host = f"{host}:{ports['mlflow']}"
    return [
        Service("s3", [str(BIN / "weed"), "mini", f"-dir={home / 's3'}", f"-ip={host}", f"-ip.bind={host}",
                       f"-s3.config={home / 's3-credentials.json'}", f"-s3.port={ports['s3']}",
                       f"-master.port={ports['s3_master']}", f"-volume.port={ports['s3_volume']}",
                       f"-filer.port={ports['s3_filer']}", "-webdav=false", "-admin.ui=false",
                       "-s3.port.iceberg=0", "-s3.port.lance=0"],  # catalogs fineflow does not use: no more ports
                f"http://{host}:{ports['s3']}/healthz", quiet),
        Service("mlflow", [str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
                           "--host", host, "--port", str(ports["mlflow"]),
                           "--workers", "2", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                           "--artifacts-destination", f"s3://{BUCKET}/mlflow",
                           "--allowed-hosts", f"{mlflow_host},localhost:{ports['mlflow']}"],
                f"http://{mlflow_host}/health", mlflow_env),
        Service("prefect", [str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(ports["prefect"])],
                f"http://{host}:{ports['prefect']}/api/health",
                {**prefect_env, **credentials.prefect_server_env(home, f"http://{host}:{ports['prefect']}")}),
        Service("worker", [str(BIN / "prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process"],
                "", prefect_env, stop_signal=signal.SIGINT),  # a worker stops on SIGINT only
        *(Service(name, command.argvs[-1], "", command.env, listens_on=ports["ray"] if name == "ray-head" else None)
          for name, command in (ray_cluster.nodes(home, ports["ray"], s3_env) if ray_cluster.wanted(home) else [])),
    ]


def _pid(home: Path, name: str) -> int | None:
    path = home / "pids" / f"{name}.pid"
    if not path.exists():
        return None
    pid = int(path.read_text())
    if group_alive(pid):  # each service leads its own process group
        return pid
    path.unlink()
    return None


def _wait_healthy(svc: Service, home: Path) -> None:
    deadline = time.monotonic() + svc.timeout_s
    while time.monotonic() < deadline:
        if svc.listens_on and net.port_free(svc.listens_on):
            pass
        elif not svc.health_url or http_ok(svc.health_url):
            return
        if _pid(home, svc.name) is None:
            break
        time.sleep(0.5)
    log = home / "logs" / f"{svc.name}.log"
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"{svc.name} did not become healthy at {svc.health_url}; log {log}:\n{tail}")


def _ensure_bucket(home: Path) -> None:
    from tasks.services.storage import s3_client

    client = s3_client(Settings.load())
    deadline = time.monotonic() + 30
    while True:  # the S3 gateway answers a little after the master
        try:
            names = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
            if BUCKET not in names:
                client.create_bucket(Bucket=BUCKET)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _ensure_work_pool(service_env: dict[str, str]) -> None:
    argv = [str(BIN / "prefect"), "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"]
    subprocess.run(argv, env={**environ(), **service_env}, check=True, capture_output=True, timeout=120)


def up(ports_mode: str = "default", moves: int = 0) -> dict:
    os.umask(0o077)  # the state is the user's alone: this process and all it starts write files 0600, folders 0700
    home = state_dir()
    for sub in ("logs", "pids", "s3", "prefect"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    make_private(home)  # what an earlier, laxer start left
    ports, host = stack_ports.chosen(home, ports_mode), stack_host(home)
    kept = json.loads((home / "stack.json").read_text()) if (home / "stack.json").exists() else {}
    stack = {"ports": ports, "host": host, "s3_endpoint": f"http://{host}:{ports['s3']}", "s3_bucket": BUCKET,
             "mlflow_uri": f"http://{host}:{ports['mlflow']}", "mlflow_artifacts_uri": f"s3://{BUCKET}/mlflow",
             "prefect_api_url": f"http://{host}:{ports['prefect']}/api", "work_pool": WORK_POOL,
             "ports_mode": kept.get("ports_mode", ports_mode),
             **({"ray_address": f"127.0.0.1:{ports['ray']}"} if ray_cluster.wanted(home) else {})}
    (home / "stack.json").write_text(json.dumps(stack, indent=1))
    for svc in services(home, ports):
        if svc.name == "worker":
            _ensure_work_pool(svc.env)
        if svc.name == "worker" and _pid(home, svc.name) is None:
            if dropped := drop_missed_runs(stack["prefect_api_url"], svc.env["PREFECT_API_AUTH_STRING"]):
                print(f"  dropped {dropped} scheduled run(s) of {', '.join(MISSED_FLOWS)} missed while stopped",
                      flush=True)
        if _pid(home, svc.name) is None:
            print(f"starting {svc.name} ...", flush=True)
            with open(home / "logs" / f"{svc.name}.log", "ab") as log:
                proc = subprocess.Popen(svc.argv, env={**environ(), **svc.env}, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True, cwd=home)
            (home / "pids" / f"{svc.name}.pid").write_text(str(proc.pid))
        try:
            _wait_healthy(svc, home)
        except RuntimeError as e:  # another process bound a port picked free for it: new ones, start it again
            if moves >= 3 or not stack_ports.can_move(stack, svc.name, str(e)):
                raise
            print(f"  {svc.name}: a port was taken meanwhile; moved to {stack_ports.move(home, svc.name)}", flush=True)
            return up(ports_mode, moves + 1)
        if svc.name == "s3":
            _ensure_bucket(home)
        where = svc.health_url or (f"listening on port {svc.listens_on}" if svc.listens_on else
                                   f"polling {WORK_POOL}" if svc.name == "worker" else "started")
        print(f"  {svc.name:10s} ready  {where}", flush=True)
    from tasks.serving import rollout

    # What the registry says is serving comes back: every alias's endpoint and its router (same URL as before).
    rollout.restore(log=lambda line: print(f"  {line}", flush=True))
    return stack


def _stop(home: Path, svc: Service) -> None:
    pid = _pid(home, svc.name)
    if pid is None:
        return
    stopped = stop_group(pid, svc.stop_signal, timeout_s=STOP_GRACE_S)
    (home / "pids" / f"{svc.name}.pid").unlink(missing_ok=True)
    print(f"stopped {svc.name}" if stopped else
          f"killed {svc.name}: it still ran {STOP_GRACE_S} s after {signal.Signals(svc.stop_signal).name}")


def stop(name: str) -> None:
    """Stop one service (s3, mlflow, prefect, worker), leaving the rest and the endpoints running; ``up`` brings
    it back on the same ports."""
    home = state_dir()
    chosen = [svc for svc in services(home, json.loads((home / "stack.json").read_text())["ports"])
              if svc.name == name]
    if not chosen:
        raise ValueError(f"no service {name!r}; services: s3, mlflow, prefect, worker (ray-head, ray-worker with "
                         "FINEFLOW_SERVING=ray)")
    _stop(home, chosen[0])


def down() -> None:
    home = state_dir()
    if not (home / "stack.json").exists():
        print("no stack state; nothing to stop")
        return
    stack = json.loads((home / "stack.json").read_text())
    if stack.get("ray_address") and _pid(home, "ray-head"):
        ray_cluster.shutdown_serve(stack["ray_address"])
    for svc in reversed(services(home, stack["ports"])):
        _stop(home, svc)
    from tasks.serving.endpoints import stop_all

    stop_all()


def status() -> bool:
    home = state_dir()
    if not (home / "stack.json").exists():
        print(f"stack not initialised (state dir {home})")
        return False
    ok = True
    for svc in services(home, json.loads((home / "stack.json").read_text())["ports"]):
        pid = _pid(home, svc.name)
        healthy = pid is not None and (not svc.health_url or http_ok(svc.health_url))
        ok &= healthy
        print(f"{svc.name:8s} {'up' if healthy else 'DOWN':5s} pid={pid or '-':<8} {svc.health_url}")
    from tasks.serving.endpoints import describe, list_endpoints

    for ep in list_endpoints():
        print(f"endpoint {describe(ep)}")
    stack = json.loads((home / "stack.json").read_text())
    if stack.get("ray_address") and _pid(home, "ray-head"):
        ray_cluster.print_applications(stack)
    print(f"state: {home}")
    return ok


def env_exports() -> str:
    """Shell exports that point prefect and mlflow CLIs at the running stack; its passwords are read from their
    files when the exports run (none is printed)."""
    settings = Settings.load()
    settings.require("prefect_api_url", "mlflow_uri")
    lines = [f"export PREFECT_API_URL={settings.prefect_api_url}", f"export MLFLOW_TRACKING_URI={settings.mlflow_uri}",
             f"export FINEFLOW_HOME={settings.home}"]
    prefect, mlflow = (secret_file(name, settings.home) for name in ("prefect-password", "mlflow-password"))
    if prefect.exists():
        lines += [f'export PREFECT_API_AUTH_STRING="{PREFECT_USER}:$(cat {prefect})"',
                  f"export MLFLOW_TRACKING_USERNAME={MLFLOW_USER}",
                  f'export MLFLOW_TRACKING_PASSWORD="$(cat {mlflow})"']
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "reset", "env"])
    parser.add_argument("--ports", choices=["default", "free"], default="default")
    args = parser.parse_args()
    os.umask(0o077)  # status and down too write under the state directory (endpoint records)
    if args.command == "up":
        up(args.ports)
    elif args.command == "down":
        down()
    elif args.command == "env":
        print(env_exports())
    elif args.command == "reset":
        down()
        shutil.rmtree(state_dir(), ignore_errors=True)
        print(f"removed {state_dir()}")
    else:
        sys.exit(0 if status() else 1)


if __name__ == "__main__":
    main()
