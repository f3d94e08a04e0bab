"""Run a command in fineflow's image with podman, on this machine's network, given what a flow run needs.

    python -m infra.image.run fineflow:TAG-ray -- prefect flow-run execute     # a flow run (a process pool's command)
    python -m infra.image.run --detach --name ff-ray fineflow:TAG-ray -- \
        python -m infra.image.ray_node --port 26379 --ray-client-server-port 10001

A flow in a container serves on a Ray cluster through the head's client server (``FINEFLOW_SERVING=
ray-client://HEAD:10001``), as a Kubernetes Job's pod does: a driver given the head's GCS port must run beside a
Ray node (it finds the node's processes in the process list and its sockets in Ray's folder), which
``--ray-dir`` gives a container of this machine (the host's process list, the folder mounted at /tmp/ray).

The container reaches the local stack's services where they listen (``--network host``: 127.0.0.1), and gets by
name only the variables of ``PASSED`` that are set here, with the stack's addresses and logins
(``Settings.client_env`` and its S3 keys) added: their values travel in podman's own environment, never on a
command line or in the image. ``FINEFLOW_EPHEMERAL=1``: nothing it starts outlives it, so a pipeline in it serves
through the Ray platform. The runtime flags are the ones this kind of machine needs: ``runc`` (crun refuses a
host with hybrid cgroups), and rlimits no higher than podman's monitor may set (its defaults, 1048576 files and
4194304 processes, fail with EPERM where the process limit is the kernel's pid_max).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from tasks.settings import Settings, environ

# What a flow run or a Ray node in the container may be given from here, when set.
PASSED = ("PREFECT__FLOW_RUN_ID", "PREFECT__FLOW_ID", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING",
          "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "FINEFLOW_S3_ENDPOINT",
          "FINEFLOW_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FINEFLOW_MLFLOW_ARTIFACTS",
          "FINEFLOW_SERVING", "FINEFLOW_SERVE_PORT", "FINEFLOW_API_KEY", "FINEFLOW_EPHEMERAL", "HF_HUB_OFFLINE")


def limits() -> list[str]:
    import resource

    files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    procs = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    procs = pid_max if procs == resource.RLIM_INFINITY else min(procs, pid_max)
    files = 1 << 20 if files == resource.RLIM_INFINITY else files
    return ["--ulimit", f"nofile={files}:{files}", "--ulimit", f"nproc={procs}:{procs}"]


def stack_env() -> dict[str, str]:
    """The stack's addresses, logins and the endpoints' API key as variables (what a process started here would
    read from its files)."""
    from tasks.services import keys

    settings = Settings.load()
    values = {**settings.client_env(), "FINEFLOW_S3_ENDPOINT": settings.s3_endpoint, "FINEFLOW_API_KEY": keys.api_key(),
              "FINEFLOW_S3_BUCKET": settings.s3_bucket, "FINEFLOW_MLFLOW_ARTIFACTS": settings.mlflow_artifacts_uri,
              "AWS_ACCESS_KEY_ID": settings.s3_access_key, "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key}
    values = {name: v.get_secret_value() if hasattr(v, "get_secret_value") else v for name, v in values.items()}
    return {name: value for name, value in values.items() if value}


def podman(image: str, command: list[str], *, detach: bool = False, name: str | None = None,
           env: dict[str, str] | None = None, ray_dir: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The podman argv and the environment to run it with: variables by name in the argv, values in the env.
    ``ray_dir``: this machine's Ray folder, shared (with the host's process list, where Ray looks for the local
    node's processes) by every container of a Ray node or driver here."""
    values = {**{k: v for k, v in environ().items() if k in PASSED}, **stack_env(), **(env or {}),
              "FINEFLOW_EPHEMERAL": "1"}
    runtime = ["--runtime", "runc"] if shutil.which("runc") else []
    argv = ["podman", "run", "--rm", "--network", "host", *runtime, *limits(),
            *(["--detach"] if detach else []), *(["--name", name] if name else []),
            *(["--pid", "host", "--volume", f"{ray_dir}:/tmp/ray"] if ray_dir else []),
            *(arg for var in sorted(values) for arg in ("-e", var)), image, *command]
    return argv, {**environ(), **values}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detach", action="store_true", help="start it and return (a Ray node)")
    p.add_argument("--name", help="the container's name")
    p.add_argument("--ray-dir", help="this machine's Ray folder, for a Ray node or a Ray driver (a flow that serves)")
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER, help="after --: what runs in the container")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command after --")
    if not shutil.which("podman"):
        sys.exit("infra.image.run needs podman (apt-get install podman runc) and an image (make image)")
    argv, env = podman(args.image, command, detach=args.detach, name=args.name, ray_dir=args.ray_dir)
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)  # the worker's signals reach podman, which passes them to the container


if __name__ == "__main__":
    main()
