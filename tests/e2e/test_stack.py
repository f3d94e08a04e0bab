"""The stack's commands as a user runs them, on a state directory of their own: ports from ``FINEFLOW_*_PORT``,
``status`` and ``env``, ``down`` stopping every endpoint but keeping the state, ``up`` again finding the data,
``reset`` removing it all; and the services reached by environment variables alone, with no ``stack.json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.ports import PORT_VARIABLES, TWIN_OFFSET
from tasks import launchers, net
from tasks.core import Command
from tasks.net import ready as http_ready
from tasks.servers import tree_guard
from tasks.serving import endpoints
from tasks.settings import Settings, stack_logins

pytestmark = pytest.mark.stack


# What points a process at some stack; cleared here, so the state directory alone decides (the session's stack
# fixture sets some of them for the other tests).
SERVICE_VARIABLES = ("FINEFLOW_S3_ENDPOINT", "FINEFLOW_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                     "MLFLOW_TRACKING_URI", "FINEFLOW_MLFLOW_ARTIFACTS", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING",
                     "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(autouse=True)
def no_service_variables(monkeypatch):
    for name in SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# Three runs booked on the stack: watch 10 minutes ago (missed), watch in an hour, another flow 10 minutes ago.
BOOK_RUNS = """
from datetime import datetime, timedelta, timezone
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Scheduled
now = datetime.now(timezone.utc)
with get_client(sync_client=True) as c:
    for name, minutes in (("watch", -10), ("watch", 60), ("other", -10)):
        run = c.create_flow_run(flow(name=name)(lambda: None),
                                state=Scheduled(scheduled_time=now + timedelta(minutes=minutes)))
        print(run.id)
"""
READ_RUNS = """
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
with get_client(sync_client=True) as c:
    for run_id in {ids}:
        try:
            print(c.read_flow_run(run_id).id)
        except ObjectNotFound:
            print("missing")
"""


def assert_closed_without_credentials(stack: dict, home, creds: dict) -> None:
    """What a browser page or another user of the machine can send gets nothing: MLflow and Prefect ask for their
    logins (health stays open), Prefect allows no other origin, and SeaweedFS's own servers (filer, master, volume,
    admin; HTTP and gRPC) take no connection without the stack's client certificate: only S3 with its keys."""
    import httpx

    ports, host = stack["ports"], "127.0.0.1"
    mlflow, prefect = stack["mlflow_uri"], stack["prefect_api_url"]
    alias = {"name": "fineflow-quickstart", "alias": "production", "version": "1"}
    assert httpx.get(f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401
    assert httpx.post(f"{mlflow}/api/2.0/mlflow/registered-models/alias", json=alias).status_code == 401
    assert httpx.delete(f"{mlflow}/api/2.0/mlflow/registered-models/alias", params=alias).status_code == 401
    assert httpx.get(f"{mlflow}/health").status_code == 200
    assert httpx.post(f"{prefect}/flows/filter", json={}).status_code == 401
    assert httpx.post(f"{prefect}/deployments/filter", json={}).status_code == 401
    assert httpx.get(f"{prefect}/health").status_code == 200
    preflight = httpx.options(f"{prefect}/flows/filter", headers={"Origin": "http://evil.example",
                                                                  "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers, preflight.headers
    # The filer POST that once started a promoted run, the master's collection delete, the volume: plain HTTP is
    # refused, and TLS without the client certificate fails its handshake.
    filer = f"http://{host}:{ports['s3_filer']}/buckets/fineflow/incoming/quickstart/"
    assert refused_as_plain_http("POST", filer, files={"file": ("x.jsonl", b'{"instruction": "x", "output": "y"}\n')})
    assert refused_as_plain_http("GET", f"http://{host}:{ports['s3_master']}/col/delete?collection=fineflow")
    for port in (ports["s3_master"], ports["s3_volume"], ports["s3_filer"],
                 *(ports[name] + 10000 for name in ("s3_master", "s3_volume", "s3_filer", "s3"))):
        assert refused_without_client_certificate(host, port, home / "tls" / "ca.crt"), port
    # With the keys, S3 answers, and nothing above reached the bucket.
    from tasks.services.storage import s3_client

    s3 = s3_client(Settings(home=home, s3_endpoint=stack["s3_endpoint"], s3_access_key=creds["accessKey"],
                            s3_secret_key=creds["secretKey"]))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="fineflow").get("Contents", [])]
    assert not [k for k in keys if k.startswith("incoming/")], keys


def refused_as_plain_http(method: str, url: str, **request) -> bool:
    """Whether a TLS-only server refuses a plain HTTP request: Go answers 400 and closes, and when the request had a
    body it had not read, the close can reset the connection before the 400 arrives; either way nothing was taken."""
    import httpx

    try:
        return httpx.request(method, url, **request).status_code == 400
    except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
        return True


def refused_without_client_certificate(host: str, port: int, ca) -> bool:
    """Whether the TLS server at ``port`` (trusted through ``ca``) ends a connection that has no client
    certificate before it answers anything."""
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    try:
        with socket.create_connection((host, port), timeout=5) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return not tls.recv(100)
    except (ssl.SSLError, ConnectionError):
        return True


def open_to_others(home) -> list[str]:
    """What under ``home`` (itself included) its group or others may read, write or enter."""
    return [str(p) for p in (home, *home.rglob("*")) if not p.is_symlink() and p.exists() and p.stat().st_mode & 0o077]


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def cli(home, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "infra.stack", *args], capture_output=True, text=True,
                            timeout=400, env={**os.environ, "FINEFLOW_HOME": str(home), **(env or {})})
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def python(code: str, env: dict) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def start_endpoint(name: str):
    """A small HTTP server registered as an endpoint (what the deploy step leaves running)."""
    port = net.free_port()
    server = f"import http.server as h; h.HTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler).serve_forever()"
    return endpoints.start(name, Command(["python3", "-c", server], return_value=f"http://127.0.0.1:{port}",
                                         checker=http_ready(f"http://127.0.0.1:{port}/"), ready_timeout_s=20),
                           "test", "none")


def test_settings_from_the_environment_override_stack_json(tmp_path, monkeypatch):
    (tmp_path / "stack.json").write_text(json.dumps({
        "s3_endpoint": "http://127.0.0.1:1", "s3_bucket": "local", "mlflow_uri": "http://127.0.0.1:2",
        "mlflow_artifacts_uri": "s3://local/mlflow", "prefect_api_url": "http://127.0.0.1:3/api"}))
    (tmp_path / "s3-credentials.json").write_text(json.dumps(
        {"identities": [{"credentials": [{"accessKey": "local-access", "secretKey": "local-secret"}]}]}))
    monkeypatch.setenv("FINEFLOW_HOME", str(tmp_path))
    local = Settings.load()
    assert (local.s3_endpoint, local.s3_bucket, local.mlflow_uri, local.prefect_api_url) == \
        ("http://127.0.0.1:1", "local", "http://127.0.0.1:2", "http://127.0.0.1:3/api")
    assert local.s3_access_key.get_secret_value() == "local-access" and "local-secret" not in repr(local)
    remote = {"FINEFLOW_S3_ENDPOINT": "https://s3.example", "FINEFLOW_S3_BUCKET": "team",
              "AWS_ACCESS_KEY_ID": "AKIA-remote", "AWS_SECRET_ACCESS_KEY": "remote-secret",
              "MLFLOW_TRACKING_URI": "https://mlflow.example", "FINEFLOW_MLFLOW_ARTIFACTS": "s3://team/mlflow",
              "PREFECT_API_URL": "https://prefect.example/api"}
    for k, v in remote.items():
        monkeypatch.setenv(k, v)
    s = Settings.load()
    assert (s.s3_endpoint, s.s3_bucket, s.mlflow_uri, s.mlflow_artifacts_uri, s.prefect_api_url) == \
        ("https://s3.example", "team", "https://mlflow.example", "s3://team/mlflow", "https://prefect.example/api")
    assert (s.s3_access_key.get_secret_value(), s.s3_secret_key.get_secret_value()) == ("AKIA-remote", "remote-secret")
    monkeypatch.setenv("FINEFLOW_HOME", str(tmp_path / "empty"))
    for k in remote:
        monkeypatch.delenv(k)
    with pytest.raises(RuntimeError, match="fineflow is not configured: mlflow_uri unset. Start the local stack"):
        Settings.load().require("mlflow_uri")


def test_up_status_env_down_up_reset(tmp_path, monkeypatch):
    home = tmp_path / "home"
    # Distinct, with SeaweedFS's gRPC twins (+10000) free too, as a free-port stack picks them.
    ports = dict(zip(PORT_VARIABLES, net.free_ports(len(PORT_VARIABLES), twin_offset=TWIN_OFFSET)))
    port_env = {f"FINEFLOW_{name.upper()}_PORT": str(port) for name, port in ports.items()}
    cli(home, "up", env=port_env)
    stack = json.loads((home / "stack.json").read_text())
    assert stack["ports"] == ports and stack["mlflow_uri"] == f"http://127.0.0.1:{ports['mlflow']}"
    status = cli(home, "status").stdout
    assert all(f"{svc:8s} up" in status for svc in ("s3", "mlflow", "prefect", "worker")), status
    exports = cli(home, "env").stdout
    secrets_dir = home.resolve() / "secrets"
    assert exports.splitlines() == [f"export PREFECT_API_URL=http://127.0.0.1:{ports['prefect']}/api",
                                    f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{ports['mlflow']}",
                                    f"export FINEFLOW_HOME={home.resolve()}",
                                    f'export PREFECT_API_AUTH_STRING="fineflow:$(cat {secrets_dir}/prefect-password)"',
                                    "export MLFLOW_TRACKING_USERNAME=fineflow-admin",
                                    f'export MLFLOW_TRACKING_PASSWORD="$(cat {secrets_dir}/mlflow-password)"']
    creds = json.loads((home / "s3-credentials.json").read_text())["identities"][0]["credentials"][0]
    logins = stack_logins(home)
    passwords = [creds["secretKey"], logins["MLFLOW_TRACKING_PASSWORD"], logins["PREFECT_API_AUTH_STRING"][9:]]
    assert all(len(p) >= 32 for p in passwords) and not [p for p in passwords if p in exports]
    # The exports, run by a shell, give the vendors' own CLIs what they need.
    shell = subprocess.run(["bash", "-c", 'eval "$(python -m infra.stack env)" && prefect work-pool ls && '
                            'mlflow experiments search'], capture_output=True, text=True, timeout=120,
                           env={**{k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES},
                                "FINEFLOW_HOME": str(home), "COLUMNS": "200",
                                "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"})
    assert shell.returncode == 0 and "fineflow-local" in shell.stdout and "Default" in shell.stdout, \
        shell.stdout + shell.stderr
    # Everything the stack wrote (logs, mlflow.db, the bucket's raw data, Prefect's database) is the user's alone.
    assert not open_to_others(home)
    # And no service answers, reads or writes for anyone without its credentials.
    assert_closed_without_credentials(stack, home, creds)

    # The services by environment variables alone: no stack.json where this client runs.
    remote = {**os.environ, "FINEFLOW_HOME": str(tmp_path / "elsewhere"), "FINEFLOW_S3_ENDPOINT": stack["s3_endpoint"],
              "AWS_ACCESS_KEY_ID": creds["accessKey"], "AWS_SECRET_ACCESS_KEY": creds["secretKey"],
              "MLFLOW_TRACKING_URI": stack["mlflow_uri"], "FINEFLOW_MLFLOW_ARTIFACTS": stack["mlflow_artifacts_uri"],
              "PREFECT_API_URL": stack["prefect_api_url"], **logins}
    out = python("import asyncio, pathlib, tempfile\n"
                 "from prefect.client.orchestration import get_client\n"
                 "from tasks.services import storage, tracking\n"
                 "f = pathlib.Path(tempfile.mkdtemp()) / 'kept.txt'; f.write_text('kept')\n"
                 "storage.upload_file(f, 's3://fineflow/check/kept.txt')\n"
                 "run = tracking.start_run('kept-experiment', 'r', tags={}, params={'a': 1})\n"
                 "tracking.log_text(run, 'x', 'a.txt'); tracking.end_run(run, 'FINISHED')\n"
                 "async def pools():\n"
                 "    async with get_client() as c:\n"
                 "        return [p.name for p in await c.read_work_pools()]\n"
                 "print(storage.list_keys('s3://fineflow/check/'), asyncio.run(pools()))\n", remote)
    assert "check/kept.txt" in out and "fineflow-local" in out
    assert not (tmp_path / "elsewhere" / "stack.json").exists()

    # Runs booked before a stop: the watch run whose time passed while the stack was down is dropped at the next
    # up (a worker submitting an hour of them at once locked the server); a later one and other flows' stay.
    booked = python(BOOK_RUNS, remote).split()
    assert len(booked) == 3

    # MLflow runs no job runner: it held SIGTERM for 10 s at every stop, and started 8 consumers fineflow never uses.
    mlflow = int((home / "pids" / "mlflow.pid").read_text())
    mlflow_tree = [cmdline(pid) for pid in (mlflow, *tree_guard.descendants(mlflow))]
    assert len(mlflow_tree) > 1 and not [c for c in mlflow_tree if "_job_runner" in c or "huey" in c], mlflow_tree

    # down: every endpoint stops with the services, each on its stop signal; the state stays.
    monkeypatch.setenv("FINEFLOW_HOME", str(home))
    ep = start_endpoint("kept-state-check")
    pids = [int(p.read_text()) for p in (home / "pids").iterdir()]
    down = cli(home, "down").stdout
    assert "stopped endpoint kept-state-check" in down and not ep.alive() and endpoints.list_endpoints() == []
    assert all(f"stopped {svc}\n" in down for svc in ("s3", "mlflow", "prefect", "worker")) and "killed" not in down, \
        down
    assert not any(launchers.group_alive(pid) for pid in pids) and not list((home / "pids").iterdir())
    assert {"stack.json", "s3-credentials.json", "mlflow.db", "s3", "prefect", "logs"} <= \
        {p.name for p in home.iterdir()}
    stopped = cli(home, "status", check=False)
    assert stopped.returncode == 1 and "mlflow   DOWN" in stopped.stdout

    # up again: the same ports (kept in stack.json, whatever the variables say now) and the same data; what an
    # earlier, laxer start left readable is closed.
    (home / "logs" / "mlflow.log").chmod(0o644)
    home.chmod(0o755)
    again = cli(home, "up", env={"FINEFLOW_MLFLOW_PORT": "1"}).stdout
    assert not open_to_others(home)
    assert json.loads((home / "stack.json").read_text())["ports"] == ports
    assert "dropped 1 scheduled run(s) of watch missed while stopped" in again, again
    kept = python(READ_RUNS.format(ids=booked), remote).split()
    assert kept == ["missing", *booked[1:]], kept
    out = python("from tasks.services import storage, tracking\n"
                 "print(storage.list_keys('s3://fineflow/check/'), "
                 "tracking.client().get_experiment_by_name('kept-experiment') is not None)\n", remote)
    assert "check/kept.txt" in out and out.strip().endswith("True")

    # reset: everything stops and the state directory is gone.
    pids = [int(p.read_text()) for p in (home / "pids").iterdir()]
    assert "removed" in cli(home, "reset").stdout
    assert not home.exists() and not any(launchers.group_alive(pid) for pid in pids)


def test_a_service_whose_free_port_was_taken_meanwhile_starts_on_another(tmp_path):
    """Another process binds the port picked free for MLflow before MLflow starts: ``up`` gives MLflow a new free
    port and the stack comes up; the other services keep theirs."""
    import socket

    from infra import ports

    home = tmp_path / "home"
    home.mkdir()
    picked = ports.chosen(home, "free")
    (home / "stack.json").write_text(json.dumps({"ports": picked, "host": "127.0.0.1", "ports_mode": "free"}))
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", picked["mlflow"]))
    squatter.listen()
    try:
        out = cli(home, "up").stdout
        stack = json.loads((home / "stack.json").read_text())
        assert "mlflow: a port was taken meanwhile; moved to" in out, out
        moved = stack["ports"]["mlflow"]
        assert moved != picked["mlflow"] and stack["mlflow_uri"] == f"http://127.0.0.1:{moved}"
        assert {**stack["ports"], "mlflow": picked["mlflow"]} == picked
        assert net.http_ok(f"{stack['mlflow_uri']}/health")
        assert "mlflow   up" in cli(home, "status").stdout
    finally:
        cli(home, "down", check=False)
        squatter.close()
