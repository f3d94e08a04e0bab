"""Two hosts on this machine, for the tests of what crosses machines (``tests/e2e/test_two_hosts.py``).

A private bridge (10.R.S.1/24) with two network namespaces on it, host A (.2) and host B (.3); the shared services
(SeaweedFS S3, MLflow, a Prefect server: ``infra.stack`` with ``FINEFLOW_STACK_HOST``) bound to the bridge's address
in the root namespace. Each host has its own ``FINEFLOW_HOME`` and its own Prefect worker on its own work pool
(deployment ``finetune/two-hosts-<host>``), and reaches the services only through the bridge; a Ray cluster has its
head on A and a worker node on B, and Serve's proxy on A. B's worker runs as a Kubernetes Job's pod would: in its
own process and mount namespaces, it sees none of Ray's processes or files (a Ray driver there cannot use the node
beside it), so its flows reach the cluster through Ray's client server, as A's do. Traffic goes only to addresses
inside the namespaces made here. Where namespaces cannot be made (not root, no ``ip``), both hosts are two homes on
loopback, and ``Hosts.isolated`` is False (the tests print it: never a silent stand-in).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tasks.deploy.ray import Distributed, wait_for_nodes
from tasks.launchers import group_alive, stop_group
from tasks.net import free_port
from tasks.settings import REPO_ROOT, environ, stack_logins

PREFECT = str(Path(sys.executable).parent / "prefect")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


@dataclass
class Host:
    name: str  # "a" or "b"
    ip: str
    home: Path
    ns: str | None  # its network namespace (None: loopback)
    env: dict[str, str] = field(default_factory=dict)  # what a worker machine is configured with
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv] if self.ns else argv

    def start(self, label: str, argv: list[str], extra_env: dict[str, str] | None = None,
              hidden: list[str] = ()) -> subprocess.Popen:
        """``argv`` on this host, in its own process group, logging to ``<home>/logs/<label>.log``; with ``hidden``
        folders, in new process and mount namespaces where no process outside shows and those folders are empty."""
        if hidden:
            mounts = " && ".join(f"mount -t tmpfs tmpfs {folder}" for folder in hidden)
            # sh stays the namespace's init (which ignores signals it has no handler for); argv, its child, gets
            # the process group's SIGTERM.
            argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--mount", "sh", "-c",
                    f'{mounts} && "$@"', "sh", *argv]
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        with open(self.home / "logs" / f"{label}.log", "ab") as log:
            proc = subprocess.Popen(self.argv(argv), env={**environ(), **self.env, **(extra_env or {})}, cwd=REPO_ROOT,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs[label] = proc
        return proc

    def processes(self, marker: str) -> set[int]:
        """The pids of this host's processes whose command line holds ``marker`` (on loopback: every process's)."""
        pids = ip("netns", "pids", self.ns).stdout.split() if self.ns else [p.name for p in Path("/proc").iterdir()]
        found = set()
        for pid in filter(str.isdigit, pids):
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.add(int(pid))
            except OSError:  # gone meanwhile
                pass
        return found

    def kill(self, label: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(label)
        stop_group(proc.pid, sig, timeout_s=20)
        proc.wait(timeout=30)


def namespaces_possible() -> str | None:
    """None when this process can make network namespaces; else why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no ip command (iproute2)"
    return None


def _free_subnet() -> str:
    routes = ip("-4", "route").stdout
    for _ in range(50):
        subnet = f"10.{random.randint(64, 254)}.{random.randint(1, 254)}"
        if f"{subnet}.0/24" not in routes:
            return subnet
    raise RuntimeError("no free 10.x.y.0/24 for the test bridge")


class Hosts:
    """The two hosts, the shared services and the Ray cluster; ``close()`` leaves nothing behind."""

    def __init__(self, root: Path):
        self.root, self.suffix = root, secrets.token_hex(3)
        self.why_not = namespaces_possible()
        self.isolated = self.why_not is None
        self.bridge = f"ffbr{self.suffix}"
        subnet = _free_subnet() if self.isolated else None
        self.hub_ip = f"{subnet}.1" if subnet else "127.0.0.1"
        self.a, self.b = (Host(name, f"{subnet}.{last}" if subnet else "127.0.0.1", root / f"home-{name}",
                               f"ff{name}{self.suffix}" if subnet else None) for name, last in (("a", 2), ("b", 3)))
        self.hub_home = root / "hub"
        self.ray_address = self.ray_client = self.serve_http = ""
        self.ray_procs: list[tuple[Host, str]] = []

    # -- the network -------------------------------------------------------------------------------------------
    def make_network(self) -> None:
        if not self.isolated:
            return
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.hub_ip}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for host in (self.a, self.b):
            ip("netns", "add", str(host.ns))
            ip("link", "add", f"v{host.ns}", "type", "veth", "peer", "name", "eth0", "netns", str(host.ns))
            ip("link", "set", f"v{host.ns}", "master", self.bridge, "up")
            ip("-n", str(host.ns), "addr", "add", f"{host.ip}/24", "dev", "eth0")
            ip("-n", str(host.ns), "link", "set", "eth0", "up")
            ip("-n", str(host.ns), "link", "set", "lo", "up")

    def drop_network(self) -> None:
        if not self.isolated:
            return
        for host in (self.a, self.b):
            for pid in ip("netns", "pids", str(host.ns), check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            ip("link", "del", f"v{host.ns}", check=False)
            ip("netns", "del", str(host.ns), check=False)
        ip("link", "del", self.bridge, check=False)

    # -- the shared services -----------------------------------------------------------------------------------
    def logins(self) -> dict[str, str]:
        """The shared services' logins (made by their first start), as a machine of the team is given them."""
        return stack_logins(self.hub_home)

    def start_services(self, api_key: str) -> dict:
        env = {**environ(), "FINEFLOW_HOME": str(self.hub_home), "FINEFLOW_STACK_HOST": self.hub_ip}
        for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "FINEFLOW_S3_ENDPOINT", "AWS_ACCESS_KEY_ID",
                     "AWS_SECRET_ACCESS_KEY", "FINEFLOW_SERVING", "PREFECT_API_AUTH_STRING",
                     "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(name, None)
        up = subprocess.run([sys.executable, "-m", "infra.stack", "up", "--ports", "free"], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
        if up.returncode != 0:
            raise RuntimeError(f"the shared services did not start:\n{up.stdout[-2000:]}\n{up.stderr[-3000:]}")
        stack = json.loads((self.hub_home / "stack.json").read_text())
        creds = json.loads((self.hub_home / "s3-credentials.json").read_text())["identities"][0]["credentials"][0]
        for host in (self.a, self.b):
            host.home.mkdir(parents=True, exist_ok=True)
            host.env = {"FINEFLOW_HOME": str(host.home), "PREFECT_HOME": str(host.home / "prefect"),
                        "PREFECT_API_URL": stack["prefect_api_url"], "MLFLOW_TRACKING_URI": stack["mlflow_uri"],
                        "FINEFLOW_MLFLOW_ARTIFACTS": stack["mlflow_artifacts_uri"],
                        "FINEFLOW_S3_ENDPOINT": stack["s3_endpoint"], "FINEFLOW_S3_BUCKET": stack["s3_bucket"],
                        "AWS_ACCESS_KEY_ID": creds["accessKey"], "AWS_SECRET_ACCESS_KEY": creds["secretKey"],
                        "FINEFLOW_API_KEY": api_key, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "PREFECT_WORKER_QUERY_SECONDS": "2", "FINEFLOW_SERVING": "local", "PYTHONUNBUFFERED": "1",
                        **self.logins()}
        return stack

    def stop_services(self) -> None:
        if (self.hub_home / "stack.json").exists():
            subprocess.run([sys.executable, "-m", "infra.stack", "down"], cwd=REPO_ROOT, timeout=300,
                           env={**environ(), "FINEFLOW_HOME": str(self.hub_home)}, capture_output=True)

    # -- Prefect: a work pool, a deployment and a worker per host ----------------------------------------------
    def register_deployments(self, hub_env: dict[str, str]) -> None:
        spec = {"name": "fineflow-two-hosts", "prefect-version": "3.9.1", "build": None, "push": None,
                "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}],
                "deployments": [{"name": f"two-hosts-{h.name}", "entrypoint": "flows/finetune.py:finetune",
                                 "work_pool": {"name": f"ff-two-hosts-{h.name}", "work_queue_name": "default"}}
                                for h in (self.a, self.b)]}
        path = self.root / "prefect-two-hosts.yaml"
        path.write_text(json.dumps(spec))  # JSON is YAML
        for h in (self.a, self.b):
            subprocess.run([PREFECT, "work-pool", "create", f"ff-two-hosts-{h.name}", "--type", "process",
                            "--overwrite"], env=hub_env, check=True, capture_output=True, timeout=120)
        done = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(path)], cwd=REPO_ROOT,
                              env=hub_env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"prefect deploy failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def start_worker(self, host: Host) -> None:
        """A's worker is on a node of the cluster; B's sees none of its processes or files."""
        host.home.mkdir(parents=True, exist_ok=True)
        hidden = self.ray_dirs() if host is self.b and self.isolated else []
        host.start("worker", [PREFECT, "worker", "start", "--pool", f"ff-two-hosts-{host.name}", "--type", "process"],
                   hidden=hidden)

    # -- Ray: head on A, a worker node on B --------------------------------------------------------------------
    def start_ray(self) -> None:
        port = free_port()
        node = {"num_cpus": 1, "replica_slots": 4, "object_store_memory": 100_000_000}
        client_port = free_port()
        head = Distributed(port=port, node_ip=self.a.ip, temp_dir=self.ray_dirs()[0],
                           ray_client_server_port=client_port, **node).cmd()
        self.ray_address, self.ray_client = f"{self.a.ip}:{port}", f"ray://{self.a.ip}:{client_port}"
        worker = Distributed(node_ip=self.b.ip, temp_dir=self.ray_dirs()[1], **node).cmd(
            master_ip=self.ray_address)
        self.a.start("ray-head", head.argvs[-1], head.env)
        self.ray_procs.append((self.a, "ray-head"))
        self.wait_for_nodes(1)
        self.ray_worker = worker
        self.start_ray_worker()
        self.ray_procs.append((self.b, "ray-worker"))
        self.wait_for_nodes(2)
        self.serve_http = f"{self.a.ip}:{free_port()}"

    def start_ray_worker(self) -> None:
        """B's Ray node (again, after a test killed it: ``wait_for_nodes(2)`` then sees it join)."""
        self.b.start("ray-worker", self.ray_worker.argvs[-1], self.ray_worker.env)

    def wait_for_nodes(self, n: int) -> None:
        wait_for_nodes(self.ray_address, n, [host.procs[label] for host, label in self.ray_procs])

    def ray_dirs(self) -> list[str]:
        """The Ray nodes' folders (sockets, session files) on A and on B."""
        return [f"/tmp/ffr{self.suffix}{side}" for side in ("a", "b")]

    def serving(self, replicas: int = 2, gcs: bool = False) -> dict:
        """The deploy section's ``serving`` for this cluster: its client server, which every host reaches, B (no
        node, when isolated) as well as A; with ``gcs`` the head's GCS port, for a driver beside a node."""
        return {"platform": "ray", "address": self.ray_address if gcs else self.ray_client, "http": self.serve_http,
                "replicas": replicas}

    def close(self) -> None:
        for host in (self.b, self.a):
            for label in list(host.procs):
                if group_alive(host.procs[label].pid):
                    # A Prefect worker stops on SIGINT only (SIGTERM waited 20 s for the SIGKILL, per worker).
                    host.kill(label, signal.SIGINT if label == "worker" else signal.SIGKILL)
        self.stop_services()
        self.drop_network()
        for folder in self.ray_dirs():
            shutil.rmtree(folder, ignore_errors=True)

    def describe(self) -> str:
        if self.isolated:
            return (f"two hosts in network namespaces: A {self.a.ip} ({self.a.ns}), B {self.b.ip} ({self.b.ns}); "
                    f"services on the bridge {self.bridge} at {self.hub_ip}")
        return f"two homes on loopback, NOT isolated hosts: network namespaces unavailable ({self.why_not})"


def answers(url: str, headers: dict[str, str], stop: dict, out: list, body: dict) -> None:
    """Requests to ``url`` until ``stop["at"]`` (bounded: one at a time, 30 s each, 10 a second at most):
    (status, the version that answered) per request."""
    import httpx

    with httpx.Client(timeout=30) as client:
        while time.monotonic() < stop["at"]:
            try:
                r = client.post(url, json=body, headers=headers)
                out.append((r.status_code, r.headers.get("x-fineflow-version")))
            except httpx.HTTPError as e:
                out.append((0, type(e).__name__))
            time.sleep(0.1)
