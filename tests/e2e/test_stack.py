"""The stack's commands as a user runs them, on a state directory of their own: ports from ``FINEFLOW_*_PORT``,
``status`` and ``env``, ``down`` stopping every endpoint but keeping the state, ``up`` again finding the data,
``reset`` removing it all; and the services reached by environment variables alone, with no ``stack.json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from infra.stack import PORT_VARIABLES
from tasks import launchers, net
from tasks.core import Command
from tasks.net import ready as http_ready
from tasks.serving import endpoints
from tasks.settings import Settings

pytestmark = pytest.mark.stack


# What points a process at some stack; cleared here, so the state directory alone decides (the session's stack
# fixture sets some of them for the other tests).
SERVICE_VARIABLES = ("FINEFLOW_S3_ENDPOINT", "FINEFLOW_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                     "MLFLOW_TRACKING_URI", "FINEFLOW_MLFLOW_ARTIFACTS", "PREFECT_API_URL")


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


def open_to_others(home) -> list[str]:
    """What under ``home`` (itself included) its group or others may read, write or enter."""
    return [str(p) for p in (home, *home.rglob("*")) if not p.is_symlink() and p.exists() and p.stat().st_mode & 0o077]


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
    ports = {name: net.free_port() for name in PORT_VARIABLES}
    port_env = {f"FINEFLOW_{name.upper()}_PORT": str(port) for name, port in ports.items()}
    cli(home, "up", env=port_env)
    stack = json.loads((home / "stack.json").read_text())
    assert stack["ports"] == ports and stack["mlflow_uri"] == f"http://127.0.0.1:{ports['mlflow']}"
    status = cli(home, "status").stdout
    assert all(f"{svc:8s} up" in status for svc in ("s3", "mlflow", "prefect", "worker")), status
    exports = cli(home, "env").stdout
    assert exports.splitlines() == [f"export PREFECT_API_URL=http://127.0.0.1:{ports['prefect']}/api",
                                    f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{ports['mlflow']}",
                                    f"export FINEFLOW_HOME={home.resolve()}"]
    creds = json.loads((home / "s3-credentials.json").read_text())["identities"][0]["credentials"][0]
    assert creds["secretKey"] not in exports
    # Everything the stack wrote (logs, mlflow.db, the bucket's raw data, Prefect's database) is the user's alone.
    assert not open_to_others(home)

    # The services by environment variables alone: no stack.json where this client runs.
    remote = {**os.environ, "FINEFLOW_HOME": str(tmp_path / "elsewhere"), "FINEFLOW_S3_ENDPOINT": stack["s3_endpoint"],
              "AWS_ACCESS_KEY_ID": creds["accessKey"], "AWS_SECRET_ACCESS_KEY": creds["secretKey"],
              "MLFLOW_TRACKING_URI": stack["mlflow_uri"], "FINEFLOW_MLFLOW_ARTIFACTS": stack["mlflow_artifacts_uri"],
              "PREFECT_API_URL": stack["prefect_api_url"]}
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

    # down: every endpoint stops with the services; the state stays.
    monkeypatch.setenv("FINEFLOW_HOME", str(home))
    ep = start_endpoint("kept-state-check")
    pids = [int(p.read_text()) for p in (home / "pids").iterdir()]
    down = cli(home, "down").stdout
    assert "stopped endpoint kept-state-check" in down and not ep.alive() and endpoints.list_endpoints() == []
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
