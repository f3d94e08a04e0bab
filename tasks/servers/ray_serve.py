"""An engine served by Ray Serve on a Ray cluster, one engine server per replica (runs in the ``ray`` environment).

    python -m tasks.servers.ray_serve --address HEAD:PORT --port 8000 --replicas 2 --name embed -- \\
        /path/to/python -m tasks.servers.embed --model M --port {port} ...

Each replica is a Ray actor that starts the engine's own server (the argv after ``--``, ``{port}`` replaced by a
free port on the replica's node) with the environment in ``FINEFLOW_ENGINE_ENV`` (JSON), waits for its
``--health`` path, and forwards every HTTP request to it; Ray Serve's proxy on ``--port`` spreads requests over
the replicas. Replicas ask for one ``fineflow_replica`` resource each, so a cluster whose nodes each offer one
(``Distributed``'s commands do) places one replica per node. Answers carry ``X-Fineflow-Node`` (the Ray node) and
``X-Fineflow-Pid`` (the engine server's process). The driver exits once every replica is ready; the application
keeps serving until ``python -m tasks.servers.ray_serve shutdown HEAD:PORT`` (or the cluster stops). An engine server
that dies fails its replica's health check, and Serve starts a new replica.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from tasks.net import free_port, http_ok
from tasks.settings import env, environ

REPLICA_RESOURCE = "fineflow_replica"


def replica_class():
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(ray_actor_options={"num_cpus": 0, "resources": {REPLICA_RESOURCE: 1}},
                      health_check_period_s=5)
    class EngineReplica:
        def __init__(self, argv: list[str], engine_env: dict[str, str], health: str, ready_timeout_s: float):
            import ray

            self.port = free_port()
            self.node = ray.get_runtime_context().get_node_id()
            argv = [a.replace("{port}", str(self.port)) for a in argv]
            self.proc = subprocess.Popen(argv, env={**environ(), **engine_env}, start_new_session=True,
                                         stdin=subprocess.DEVNULL)
            self.base = f"http://127.0.0.1:{self.port}"
            deadline = time.monotonic() + ready_timeout_s
            while not self._answers(health):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self._stop()
                    raise RuntimeError(f"engine server {argv[:4]} did not get ready (exit code {self.proc.poll()})")
                time.sleep(0.5)
            self.health = health

        def _answers(self, path: str) -> bool:
            return http_ok(self.base + path)

        def _stop(self) -> None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)

        def check_health(self) -> None:
            if self.proc.poll() is not None or not self._answers(self.health):
                raise RuntimeError(f"engine server (pid {self.proc.pid}) is gone or not answering")

        def __del__(self):
            self._stop()

        async def __call__(self, request: Request) -> Response:
            import aiohttp

            headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
            url = self.base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
            async with aiohttp.ClientSession() as session:
                async with session.request(request.method, url, data=await request.body(), headers=headers,
                                           timeout=aiohttp.ClientTimeout(total=600)) as r:
                    body = await r.read()
                    return Response(body, status_code=r.status, media_type=r.headers.get("content-type"),
                                    headers={"X-Fineflow-Node": self.node, "X-Fineflow-Pid": str(self.proc.pid)})

    return EngineReplica


def shutdown(address: str) -> None:
    """Stop every Serve application on the cluster: each replica stops its engine server first."""
    import ray
    from ray import serve

    ray.init(address=address, log_to_driver=False)
    serve.shutdown()
    print(f"Ray Serve on {address} shut down", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["shutdown"] and len(args) == 2:
        return shutdown(args[1])
    if "--" not in args:
        sys.exit("usage: python -m tasks.servers.ray_serve --address HEAD:PORT --port N [--replicas 2] -- ENGINE ARGV\n"
                 "       python -m tasks.servers.ray_serve shutdown HEAD:PORT")
    split = args.index("--")
    p = argparse.ArgumentParser(prog="python -m tasks.servers.ray_serve")
    p.add_argument("--address", required=True, help="the Ray head, host:port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="where Ray Serve's proxy listens")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--name", default="fineflow")
    p.add_argument("--health", default="/health")
    p.add_argument("--ready-timeout-s", type=float, default=300)
    opts, engine = p.parse_args(args[:split]), args[split + 1:]
    import ray
    from ray import serve

    ray.init(address=opts.address, log_to_driver=False)
    serve.start(http_options={"host": opts.host, "port": opts.port})
    app = replica_class().options(num_replicas=opts.replicas).bind(
        engine, json.loads(env("FINEFLOW_ENGINE_ENV")), opts.health, opts.ready_timeout_s)
    serve.run(app, name=opts.name, route_prefix="/", blocking=False)  # returns once every replica is ready
    print(f"serving {opts.name}: {opts.replicas} replicas at http://{opts.host}:{opts.port}", flush=True)


if __name__ == "__main__":
    main()
