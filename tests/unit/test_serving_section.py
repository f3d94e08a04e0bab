"""The deploy section's ``serving``: which platform, checked when the config loads (a cluster that does not answer
is an error before anything is trained), and ``FINEFLOW_SERVING`` as the default."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from tasks.pipeline.config import load_config
from tasks.services import coordination
from tasks.serving import platforms
from tasks.serving.platforms import ServingSection, base


def test_the_default_is_this_machine_and_fineflow_serving_changes_it(monkeypatch):
    assert load_config("deployments/quickstart.yaml").deploy.serving.platform == "local"
    monkeypatch.setenv("FINEFLOW_SERVING", "ray://127.0.0.1:1")
    with pytest.raises(ValueError, match=r"serving.address 127.0.0.1:1: the Ray head does not answer"):
        load_config("deployments/quickstart.yaml")
    monkeypatch.setenv("FINEFLOW_SERVING", "ray-client://127.0.0.1:1")  # Ray's client notation, from any machine
    with pytest.raises(ValueError, match=r"serving.address ray://127.0.0.1:1: the Ray head does not answer"):
        load_config("deployments/quickstart.yaml")
    monkeypatch.setenv("FINEFLOW_SERVING", "kubernetes")
    with pytest.raises(ValueError, match="FINEFLOW_SERVING='kubernetes': expected local, ray, ray://HEAD:PORT or "
                                         "ray-client://HEAD:PORT"):
        load_config("deployments/quickstart.yaml")


def test_a_flow_run_in_an_ephemeral_pod_may_not_serve_locally(monkeypatch, tmp_path):
    """The Kubernetes pool sets FINEFLOW_EPHEMERAL=1: an endpoint started in the Job's pod would stop with it."""
    monkeypatch.setenv("FINEFLOW_EPHEMERAL", "1")
    with pytest.raises(ValueError, match=r"deployments/quickstart.yaml: serving.platform local: this flow runs where "
                                         r"nothing outlives it .* serve through the Ray platform's "
                                         r"client: .*FINEFLOW_SERVING=ray-client://HEAD:10001"):
        load_config("deployments/quickstart.yaml")
    explicit = tmp_path / "p.yaml"
    explicit.write_text("name: p\ndata: {path: infra/datasets/word_ops.json}\nregistry: {model_name: m}\n"
                        "deploy: {serving: {platform: local}}\n")
    with pytest.raises(ValueError, match=r"p.yaml: deploy.relay.serving: serving.platform local: this flow runs where"):
        load_config(explicit)
    # A recorded section (a version's, an endpoint's) is where it was served: read back, not refused or dialled.
    recorded = platforms.platform({"platform": "ray", "address": "127.0.0.1:1"})
    assert (recorded.name, recorded.section.address, recorded.section.replicas) == ("ray", "127.0.0.1:1", 1)
    assert platforms.platform(None).name == "local"
    monkeypatch.setenv("FINEFLOW_EPHEMERAL", "")
    assert load_config(explicit).deploy.serving.platform == "local"


def test_a_ray_section_names_a_head_that_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEFLOW_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="runs no Ray cluster: `FINEFLOW_SERVING=ray make up` starts one"):
        ServingSection(platform="ray")
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        ServingSection(platform="ray", address="head")
    with pytest.raises(ValueError, match="for platform: ray"):
        ServingSection(replicas=2)
    with socket.socket() as listening:  # a head that answers: the section takes it, and the proxy's default
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        # Its GCS port serves a driver only on a node of the cluster: refused on a machine with no raylet, naming
        # the client server to use instead; its client server serves from anywhere.
        monkeypatch.setattr(base, "ray_node_here", lambda: False)
        with pytest.raises(ValueError, match=rf"serving.address {address} is a Ray head's GCS port, .* this machine "
                                             r"runs no Ray node: give the head's client server, ray://127.0.0.1:10001"):
            ServingSection(platform="ray", address=address)
        client = ServingSection(platform="ray", address=f"ray://{address}")  # the proxy is on the head's host
        assert (client.address, client.http) == (f"ray://{address}", "127.0.0.1:14300")
        monkeypatch.setattr(base, "ray_node_here", lambda: True)
        section = ServingSection(platform="ray", address=address, replicas=2)
        assert section.http == "127.0.0.1:14300"
        with pytest.raises(ValueError, match="replicas or autoscaling, not both"):
            ServingSection(platform="ray", address=address, replicas=2, autoscaling={"max_replicas": 3})
    assert platforms.platform(section.model_dump()).name == "ray"  # as recorded: not checked again
    assert platforms.of_relaunch({"deploy": {"backend": "relay"}, "prompt_style": "alpaca"}).name == "local"


def test_a_slot_without_a_prefect_server_is_a_lock_on_this_machine_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    said: list[str] = []
    with coordination.slot("promote", "my model/x", log=said.append):
        assert (tmp_path / "locks" / "fineflow-promote-my-model-x.lock").exists()
    assert said == ["no Prefect server configured: promote of my model/x is serialized on this machine only"]
    assert coordination.limit_name("train", "a/b%c") == "fineflow-train-a-b-c"


def test_a_ray_node_is_seen_by_its_raylet_in_the_process_list(tmp_path):
    """What a Ray driver given a GCS address needs on its machine: a raylet process (``ray_node_here``)."""
    proc = tmp_path / "proc"
    for pid, argv in ((1, [b"/sbin/init"]), (7, [b"/usr/bin/python3", b"raylet"]), (9, [])):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(argv))
    (proc / "self").mkdir()
    assert not base.ray_node_here(str(proc))  # "raylet" as an argument is not Ray's node manager
    (proc / "12").mkdir()
    (proc / "12" / "cmdline").write_bytes(b"/env/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet\0--x=1")
    assert base.ray_node_here(str(proc))
    raylet = tmp_path / "raylet"  # and in this machine's real process list
    shutil.copy(shutil.which("sleep"), raylet)
    running = subprocess.Popen([str(raylet), "60"])
    try:  # until its exec has replaced the forked interpreter's command line (bounded: 5 s)
        deadline = time.monotonic() + 5
        while not base.ray_node_here() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert base.ray_node_here()
    finally:
        running.kill()
        running.wait()


def test_a_recorded_ray_version_whose_head_is_gone_is_refused_at_once():
    """A driver started against a dead head waits minutes (its subprocess timeout, 120 s for status, 900 s for a
    deploy); `make up`'s restore and `rollout status` met such versions after a cluster was gone."""
    recorded = platforms.platform({"platform": "ray", "address": "127.0.0.1:1", "http": "127.0.0.1:2"})
    with pytest.raises(platforms.ray.RayServeError, match=r"Ray Serve status on 127.0.0.1:1: the Ray head does not "
                                                          r"answer \(.*refused"):
        recorded.applications()
    with pytest.raises(platforms.ray.RayServeError, match="Ray Serve delete on 127.0.0.1:1: the Ray head does not"):
        recorded.stop("app")


def test_a_version_recorded_with_a_gcs_address_is_refused_at_once_where_no_ray_node_runs(monkeypatch):
    """A pod (no raylet) restoring a version deployed from a node: its driver would wait minutes, then fail."""
    monkeypatch.setattr(platforms.ray, "ray_node_here", lambda: False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        recorded = platforms.platform({"platform": "ray", "address": address, "http": "127.0.0.1:2"})
        with pytest.raises(platforms.ray.RayServeError, match=rf"Ray Serve status on {address}: a head's GCS port "
                                                              r"serves a driver only on a node of the cluster"):
            recorded.applications()


def test_a_driver_whose_client_server_failed_to_start_is_run_again_and_any_other_failure_is_not(
        monkeypatch, tmp_path, fineflow_home):
    """Ray's client proxy failing to start the connection's server is retried (the driver did nothing yet); a
    failure of the operation itself fails at once."""
    import sys

    from tasks.core import Command

    tries = tmp_path / "tries"
    script = ("import pathlib, sys\n"
              f"p = pathlib.Path({str(tries)!r}); n = int(p.read_text()) if p.exists() else 0\n"
              "p.write_text(str(n + 1))\n"
              "if n < int(sys.argv[1]):\n"
              "    sys.exit('RuntimeError: ' + sys.argv[2])\n"
              "print('{\"done\": ' + str(n + 1) + '}')\n")
    monkeypatch.setattr(platforms.ray, "head_silent", lambda address: None)
    recorded = platforms.platform({"platform": "ray", "address": "ray://127.0.0.1:1", "http": "127.0.0.1:2"})
    monkeypatch.setattr(platforms.ray, "CONNECT_PAUSE_S", 0.01)

    def failing(times: int, message: str):
        tries.unlink(missing_ok=True)
        monkeypatch.setattr(platforms.ray, "serve_driver", lambda args, env=None: Command(
            [sys.executable, "-c", script, str(times), message]))

    # What Ray's client prints when its proxy could not start the connection's server, and when that server died
    # as it started (the proxy's check of its command line raised).
    for cause in ("RuntimeError: Starting Ray client server failed. See ray_client_server_23023.err for detailed "
                  "logs.", "psutil.ZombieProcess: PID still exists but it's a zombie (pid=23716)"):
        failing(2, f"ConnectionAbortedError: Initialization failure from server:\nTraceback (most recent call "
                   f"last):\n  File \".../ray/util/client/server/proxier.py\", line 765, in Datapath\n{cause}")
        assert recorded.drive(["status"]) == {"done": 3}
    failing(3, "ConnectionAbortedError: Initialization failure from server:\nRuntimeError: Starting Ray client "
               "server failed.")
    with pytest.raises(platforms.ray.RayServeError, match="Starting Ray client server failed"):
        recorded.drive(["status"])
    assert tries.read_text() == "3"
    failing(1, "Deploying application m@production failed")
    with pytest.raises(platforms.ray.RayServeError, match="Deploying application"):
        recorded.drive(["status"])
    assert tries.read_text() == "1"


@pytest.mark.parametrize("key_file, deploy, keyed", [("/k", {}, True), (None, {}, True),
                                                     (None, {"api_key": False}, False)])
def test_the_ray_route_takes_feedback_behind_the_key_unless_the_version_was_deployed_without_it(
        monkeypatch, key_file, deploy, keyed):
    """An endpoint found running on the cluster (a restore, a rollback) records no key file: its route keeps the
    key all the same, unless the version's deploy section turned it off; the route records what deploy.traffic
    says, into the bucket this machine names."""
    from tasks.serving.endpoints import Endpoint

    sent: list[list[str]] = []
    monkeypatch.setattr(platforms.ray.RayPlatform, "drive", lambda self, args, **kw: sent.append(args) or {})
    monkeypatch.setenv("FINEFLOW_S3_BUCKET", "team-bucket")
    ray = platforms.platform({"platform": "ray", "address": "10.0.0.1:6379", "http": "10.0.0.1:8000"})
    traffic = {"share": 0.5}
    ep = Endpoint(name="m-v2", url="http://10.0.0.1:8000/_v/m-v2", pid=0, backend="builtin", argv=[], model_path="",
                  log_path="", started_at=0, api_key_file=key_file,
                  relaunch={"deploy": {**deploy, "traffic": traffic}, "prompt_style": "alpaca"})
    ray.switch("m", "production", ep, "2")
    args = sent[0]
    assert ("--no-api-key" not in args) is keyed
    assert args[args.index("--traffic") + 1] == '{"share": 0.5}' and args[args.index("--bucket") + 1] == "team-bucket"
    assert args[args.index("--model") + 1] == "m" and args[args.index("--target") + 1] == "m-v2"
