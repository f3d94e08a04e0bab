"""The command line of ``python -m tasks.servers.ray_serve`` (its operations and their options, and the first
form of it, still accepted), apart from what each operation does on the cluster."""

from __future__ import annotations

import argparse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.servers.ray_serve")
    sub = p.add_subparsers(dest="op", required=True)
    for name in ("deploy", "route", "delete", "status", "mirror", "pairs"):
        op = sub.add_parser(name)
        op.add_argument("--address", required=True, help="the Ray head, host:port")
        if name in ("deploy", "route"):
            op.add_argument("--http", required=True, help="where Serve's proxy listens, host:port")
        if name in ("deploy", "route", "mirror"):
            op.add_argument("--route", required=True, help="the application's route prefix")
            op.add_argument("--replicas", type=int, default=1)
        if name != "status":
            op.add_argument("--app", required=True)
    deploy_op, route_op = sub.choices["deploy"], sub.choices["route"]
    deploy_op.add_argument("--autoscaling", help="Serve's autoscaling_config, JSON (in place of --replicas)")
    deploy_op.add_argument("--health", default="/health")
    deploy_op.add_argument("--ready-timeout-s", type=float, default=300)
    deploy_op.add_argument("--model-uri", default="", help="the model's files in the bucket")
    deploy_op.add_argument("--model-path", default="", help="where the argv names the model's folder")
    deploy_op.add_argument("--api-key-env", default="", help="the engine's API key variable (read on each node)")
    route_op.add_argument("--target", required=True, help="the version application to forward to")
    route_op.add_argument("--version", required=True)
    route_op.add_argument("--model-id", default="", help="an adapter version's multiplexed model id, NAME=URI")
    route_op.add_argument("--traffic", default="", help="deploy.traffic, JSON: record requests, take feedback")
    route_op.add_argument("--model", default="", help="the registered model (the traffic folder's name)")
    route_op.add_argument("--bucket", default="", help="the bucket traffic is written to (default: the node's)")
    route_op.add_argument("--no-api-key", dest="api_key", action="store_false", help="feedback without the key")
    for op in (deploy_op, route_op):
        op.add_argument("--fetch-python", default="", help="the Python whose tasks.services.storage reaches the bucket")
    sub.choices["mirror"].add_argument("--shadow", default="", help="what to copy where, JSON (ray_shadow); '' stops")
    return p


def legacy(args: list[str]) -> list[str]:
    """The first form of the command line (one application at route /, its proxy at --host:--port) as ``deploy``."""
    p = argparse.ArgumentParser(prog="python -m tasks.servers.ray_serve")
    p.add_argument("--address", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--name", default="fineflow")
    p.add_argument("--health", default="/health")
    p.add_argument("--ready-timeout-s", type=float, default=300)
    split = args.index("--")
    o = p.parse_args(args[:split])
    return ["deploy", "--address", o.address, "--http", f"{o.host}:{o.port}", "--app", o.name, "--route", "/",
            "--replicas", str(o.replicas), "--health", o.health, "--ready-timeout-s", str(o.ready_timeout_s),
            *args[split:]]
