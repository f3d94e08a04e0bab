"""The local stack's Ray cluster: what ``FINEFLOW_SERVING=ray make up`` adds to serve on (``infra/stack.py`` runs it).

A Ray head and one worker node on 127.0.0.1, each taking up to 4 replicas (one per version at a time), with the
stack's bucket and home in their environment so replicas fetch models from it. Chosen at the first ``up`` and
kept (``ray_address`` in stack.json); ``make down`` stops Serve's applications before the nodes, ``make status``
lists them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from tasks.core import Command
from tasks.settings import REPO_ROOT, env, environ


def wanted(home: Path) -> bool:
    """``FINEFLOW_SERVING=ray`` at the first ``up`` (kept in stack.json): the stack runs a Ray cluster to serve on."""
    stack_file = home / "stack.json"
    if stack_file.exists():
        return bool(json.loads(stack_file.read_text()).get("ray_address"))
    return env("FINEFLOW_SERVING") == "ray"


def nodes(home: Path, ray_port: int, node_env: dict[str, str]) -> list[tuple[str, Command]]:
    """(name, command) of the head and the worker node, ``node_env`` (the bucket's settings) in each."""
    from tasks.deploy.ray import Distributed

    # Ray's sockets live under its temp dir: keep the path short (a Unix socket path has ~107 characters).
    temp = f"/tmp/ffray-{hashlib.sha256(str(home).encode()).hexdigest()[:8]}"
    node = {"num_cpus": 1, "replica_slots": 4, "object_store_memory": 100_000_000, "temp_dir": temp}
    head = Distributed(port=ray_port, **node).cmd()
    worker = Distributed(**node).cmd(master_ip=f"127.0.0.1:{ray_port}")
    for command in (head, worker):
        command.env = {**node_env, "FINEFLOW_HOME": str(home), **command.env}
    return [("ray-head", head), ("ray-worker", worker)]


def shutdown_serve(address: str) -> None:
    """Serve's applications stopped before the nodes: each replica stops its engine server (a replica killed with
    its node would leave the server it started running)."""
    from tasks.deploy.ray import shutdown_replicas

    command = shutdown_replicas(address)
    done = subprocess.run(command.argvs[-1], env={**environ(), **command.env}, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    print(f"stopped Ray Serve's applications on {address}" if done.returncode == 0 else
          f"Ray Serve on {address} did not shut down cleanly: {done.stderr[-500:]}")


def print_applications(stack: dict) -> None:
    """Each Serve application on the stack's cluster, with its deployments' health."""
    from tasks.serving import platforms

    ray = platforms.platform({"platform": "ray", "address": stack["ray_address"],
                              "http": f"127.0.0.1:{stack['ports']['serve']}"})
    for name, app in ray.applications().items():
        print(f"ray serve {name}\t{app['status']}\t{' '.join(f'{d}={s}' for d, s in app['deployments'].items())}")
