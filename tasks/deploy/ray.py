"""``Distributed``: a Ray cluster's head and worker processes (the contract's ``lazyllm.components.deploy.ray``),
and ``serve_replicas``: an engine served by Ray Serve, one engine server per replica.

    Distributed(port=6379).cmd()                                # ray start --block --head --port=6379 ...
    Distributed().cmd(master_ip='10.0.0.1:6379')                # ray start --block --address=10.0.0.1:6379 ...
    serve_replicas(EmbeddingDeploy().cmd(model), '10.0.0.1:6379', port=8000, replicas=2)

On real hardware the head runs on one machine and a worker on each other one (ports: the head's GCS ``port``, and
Ray's node manager / object manager / worker ports, which these commands pin so a firewall can open them); vLLM
then spans the nodes with ``Vllm(...).cmd(model, master_ip=...)`` (``--distributed-executor-backend ray``). Here
the same commands start a head and a worker on 127.0.0.1 (``tests/component/test_ray.py``).
"""

from __future__ import annotations

import json
import random
from typing import Any, ClassVar

from tasks import envs
from tasks.core import Command, check_kwargs
from tasks.deploy.base import LazyLLMDeployBase
from tasks.servers.ray_serve import REPLICA_RESOURCE  # one replica per node that offers one
from tasks.settings import REPO_ROOT, environ

RAY_ENV = envs.RAY


class Distributed(LazyLLMDeployBase):
    """``cmd(finetuned_model, base_model, master_ip)``: without ``master_ip`` the head (``ray start --head``),
    with it a worker joining that head. The command's value is ``(finetuned_model, base_model, head address)``,
    what the engine that runs on the cluster is given next. Keywords beyond the contract's ``launcher`` and
    ``port``: ``node_ip`` (this node's address), ``num_cpus``, ``num_gpus``, ``object_store_memory`` (bytes),
    ``replica_slots`` (how many ``serve_replicas`` replicas this node takes), and the node's own ports
    (``node_manager_port``, ``object_manager_port``, ``min_worker_port``, ``max_worker_port``; on the head
    ``ray_client_server_port``, where drivers on machines outside the cluster connect: Ray's default 10001)."""

    engine: ClassVar[str] = "ray"
    serves: ClassVar[tuple[str, ...]] = ()
    allowed = ("node_ip", "num_cpus", "num_gpus", "object_store_memory", "replica_slots", "node_manager_port",
               "object_manager_port", "min_worker_port", "max_worker_port", "temp_dir", "ray_client_server_port")

    def __init__(self, launcher: Any = None, port: int | None = None, **kw):
        check_kwargs(type(self).__name__, kw, self.allowed)
        super().__init__(launcher=launcher)
        self.port = port or random.randint(30000, 40000)
        self.kw = {"node_ip": "127.0.0.1", "replica_slots": 1, **kw}
        self.finetuned_model = self.base_model = self.master_ip = None

    def cmd(self, finetuned_model: str | None = None, base_model: str | None = None,
            master_ip: str | None = None) -> Command:
        self.finetuned_model, self.base_model, self.master_ip = finetuned_model, base_model, master_ip
        kw = self.kw
        argv = [envs.bin_path(RAY_ENV, "ray"), "start", "--block"]
        argv += ["--head", f"--port={self.port}", "--include-dashboard=false"] if not master_ip else \
            [f"--address={master_ip}"]
        argv += [f"--node-ip-address={kw['node_ip']}", "--disable-usage-stats",
                 f"--resources={json.dumps({REPLICA_RESOURCE: kw['replica_slots']})}"]
        for key in ("num_cpus", "num_gpus", "object_store_memory", "node_manager_port", "object_manager_port",
                    "min_worker_port", "max_worker_port", "temp_dir", "ray_client_server_port"):
            if kw.get(key) is not None:
                argv.append(f"--{key.replace('_', '-')}={kw[key]}")
        # Ray's workers import the replicas' code (tasks.servers.ray_serve) from the checkout, on every node. Serve's
        # proxy (one, on the head, where the URLs point) spreads requests over every node's replicas rather than
        # keeping them on its own node's.
        env = {**envs.path_env(RAY_ENV), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO_ROOT),
               "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0", "RAY_SERVE_PROXY_PREFER_LOCAL_AZ_ROUTING": "0"}
        return Command(argv, return_value=(finetuned_model, base_model, self.address()), env=env)

    def address(self) -> str:
        """The head's address (``host:port``): the workers' and the engines' ``master_ip``."""
        return self.master_ip or f"{self.kw['node_ip']}:{self.port}"

    def geturl(self, job: Any = None) -> tuple[str | None, str | None, str]:
        return self.finetuned_model, self.base_model, self.address()


def replica_argv(engine_command: Command) -> list[str]:
    """The engine's server (its last argv) with ``{port}`` as its ``--port``: each replica fills in its own."""
    argv = list(engine_command.argvs[-1])
    if "--port" not in argv:
        raise ValueError(f"the engine command has no --port to give each replica its own: {argv[:4]}")
    argv[argv.index("--port") + 1] = "{port}"
    return argv


def serve_driver(args: list[str], engine_env: dict[str, str] | None = None) -> Command:
    """``python -m tasks.servers.ray_serve ARGS`` in the ``ray`` environment; ``engine_env`` is what each replica
    starts its engine server with (never a secret: Ray keeps it in its control store)."""
    env = {**envs.path_env(RAY_ENV), "PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0",
           "FINEFLOW_ENGINE_ENV": json.dumps({**(engine_env or {}), "PYTHONPATH": str(REPO_ROOT)})}
    return Command([envs.bin_path(RAY_ENV, "python"), "-m", "tasks.servers.ray_serve", *args], env=env)


def serve_replicas(engine_command: Command, address: str, port: int, replicas: int = 2, name: str = "fineflow",
                   host: str = "127.0.0.1", health: str = "/health") -> Command:
    """The driver that serves ``engine_command``'s server (its last argv; its ``--port`` value becomes each
    replica's own free port) through Ray Serve on the cluster at ``address``, ``replicas`` times, behind one proxy
    at ``host:port``. It returns once every replica answers ``health``; the value is the proxy's URL."""
    command = serve_driver(["--address", address, "--host", host, "--port", str(port), "--replicas", str(replicas),
                            "--name", name, "--health", health, "--ready-timeout-s",
                            str(engine_command.ready_timeout_s), "--", *replica_argv(engine_command)],
                           engine_command.env)
    command.return_value = f"http://{host}:{port}"
    return command


def shutdown_replicas(address: str) -> Command:
    """Stop the Serve applications on the cluster at ``address`` (each replica stops its engine server)."""
    return serve_driver(["shutdown", address])


def alive_nodes(address: str) -> int:
    """How many nodes the cluster at ``address`` has alive (``ray status``); 0 when it does not answer."""
    import subprocess

    out = subprocess.run([envs.bin_path(RAY_ENV, "ray"), "status", f"--address={address}"], capture_output=True,
                         text=True, timeout=60, env={**environ(), **envs.path_env(RAY_ENV)}, check=False)
    if out.returncode != 0 or "Active:" not in out.stdout:
        return 0
    active = out.stdout.split("Active:")[1].split("Pending:")[0]
    return sum(1 for line in active.splitlines() if "node_" in line)


def wait_for_nodes(address: str, n: int, procs: list, timeout_s: float = 240) -> None:
    """Until the cluster at ``address`` has ``n`` nodes; an error if one of ``procs`` (its ``ray start``
    processes) exits first, or after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while alive_nodes(address) < n:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a ray start process of the cluster at {address} exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray cluster at {address} did not reach {n} nodes in {timeout_s:.0f} s")
        time.sleep(2)
