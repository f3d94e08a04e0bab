"""The local stack's ports: chosen once and kept in ``stack.json``, so ``up`` twice finds the same stack.

With ``--ports free`` (the tests' stacks) they are picked distinct and free (``tasks.net.free_ports``); another
process can still bind one between the pick and the service's start. Such a service gets new free ports and is
started again (``move``) instead of failing the whole ``up``. Ports the user set (``FINEFLOW_*_PORT``, the
default mode) are never moved: a taken one is an error naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.net import free_ports, lost_port_race
from tasks.settings import env

# Each service's port: FINEFLOW_<NAME>_PORT, declared with its default in tasks.settings.
PORT_VARIABLES = {"s3": "FINEFLOW_S3_PORT", "s3_master": "FINEFLOW_S3_MASTER_PORT",
                  "s3_volume": "FINEFLOW_S3_VOLUME_PORT", "s3_filer": "FINEFLOW_S3_FILER_PORT",
                  "mlflow": "FINEFLOW_MLFLOW_PORT", "prefect": "FINEFLOW_PREFECT_PORT", "ray": "FINEFLOW_RAY_PORT",
                  "serve": "FINEFLOW_SERVE_PORT"}
SERVICE_PORTS = {"s3": ("s3", "s3_master", "s3_volume", "s3_filer"), "mlflow": ("mlflow",),
                 "prefect": ("prefect",), "ray-head": ("ray",)}
TWIN_OFFSET = 10000  # SeaweedFS serves gRPC on port + 10000: those must be free and distinct too


def chosen(home: Path, mode: str) -> dict[str, int]:
    """The stack's ports: those kept in stack.json, else picked (``free``) or read from the variables."""
    stack_file = home / "stack.json"
    if stack_file.exists():
        return json.loads(stack_file.read_text())["ports"]
    if mode == "free":
        return dict(zip(PORT_VARIABLES, free_ports(len(PORT_VARIABLES), twin_offset=TWIN_OFFSET)))
    return {name: int(env(variable)) for name, variable in PORT_VARIABLES.items()}


def can_move(stack: dict, service: str, error: str) -> bool:
    """Whether ``service`` failed because a port it was given was taken, and its ports were picked free."""
    return stack.get("ports_mode") == "free" and service in SERVICE_PORTS and lost_port_race(error)


def move(home: Path, service: str) -> dict[str, int]:
    """New free ports for ``service`` (distinct from the stack's others), written to stack.json; returns them."""
    stack_file = home / "stack.json"
    stack = json.loads(stack_file.read_text())
    names = SERVICE_PORTS[service]
    others = {port for name, port in stack["ports"].items() if name not in names}
    picked = [p for p in free_ports(len(names) + len(others), twin_offset=TWIN_OFFSET) if p not in others]
    stack["ports"].update(zip(names, picked))
    stack_file.write_text(json.dumps(stack, indent=1))
    return {name: stack["ports"][name] for name in names}
