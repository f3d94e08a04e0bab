"""Engines served by Ray Serve on a Ray cluster, one engine server per replica (runs in the ``ray`` environment).

    python -m tasks.servers.ray_serve --address HEAD:PORT --port 8000 --replicas 2 --name embed -- \\
        /path/to/python -m tasks.servers.embed --model M --port {port} ...
    python -m tasks.servers.ray_serve deploy --address HEAD:PORT --http HOST:PORT --app NAME --route /_v/NAME \\
        [--replicas N] [--autoscaling JSON] [--model-uri s3://... --model-path P] [--api-key-env VAR] -- ARGV
    python -m tasks.servers.ray_serve route --address HEAD:PORT --http HOST:PORT --app ALIAS_APP --route /m/alias \\
        --target VERSION_APP --version V [--model-id NAME=URI] [--replicas N]
    python -m tasks.servers.ray_serve mirror|pairs --address HEAD:PORT --app ALIAS_APP ...  # a canary: ray_shadow
    python -m tasks.servers.ray_serve delete --address HEAD:PORT --app NAME   # its replicas drain, then stop
    python -m tasks.servers.ray_serve status --address HEAD:PORT              # JSON: each application
    python -m tasks.servers.ray_serve shutdown HEAD:PORT                      # every application

A *version* is an application of ``EngineReplica``s: each starts the engine's own server (the argv after ``--``,
``{port}`` replaced by a free port on the replica's node) with the environment in ``FINEFLOW_ENGINE_ENV`` (JSON),
waits for its ``--health`` path, and forwards requests to it. With ``--model-uri`` a replica whose node lacks the
model's files fetches them from the bucket first (into the node's ``FINEFLOW_HOME``) and serves that copy. The
API key is read on the replica's node (``FINEFLOW_API_KEY`` or the node's key file), never passed through Ray.
An *alias* is an application of one small ``AliasRoute`` at the model's stable route: it forwards to the version
application its ``user_config`` names, so moving the alias is Serve's in-place reconfigure (no replica restarts,
no request dropped) and the old version's replicas drain when its application is deleted. Replicas ask for one
``fineflow_replica`` resource each, at most one per node, so a version's replicas spread over the nodes.
A version whose engine serves LoRA adapters on its base is shared by the adapter versions of that base: a request
naming an adapter (Serve's multiplexed model id) is served with it, each replica loading it on its node as it is
asked for (``ray_adapters``), and an alias of an adapter version routes with that id.
Answers carry ``X-Fineflow-Node`` (the Ray node), ``X-Fineflow-Pid`` (the engine server's process) and, through
an alias, ``X-Fineflow-Version``. Every driver command exits once Serve has done it; the applications keep
serving until deleted or the cluster stops. An engine server that dies fails its replica's health check, and
Serve starts a new replica.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks.net import free_port, http_ok
from tasks.servers import ray_adapters, ray_shadow
from tasks.servers.ray_node import die_with_parent, node_api_key, node_copy
from tasks.servers.ray_serve_args import legacy, parser
from tasks.servers.ray_shadow import RayShadow
from tasks.servers.ray_traffic import RayTraffic
from tasks.servers.router import with_model
from tasks.servers.shadow import kept
from tasks.servers.traffic import HEADER
from tasks.settings import env, environ, state_dir

REPLICA_RESOURCE = "fineflow_replica"
MAX_ONGOING = 64  # requests a replica takes at once
FORWARDED = ("authorization", "content-type", "accept")


def deployments():
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    def stripped(request: Request) -> str:
        """The path below the application's route prefix, with its query."""
        path = request.url.path[len(request.scope.get("root_path", "")):] or "/"
        return path + (f"?{request.url.query}" if request.url.query else "")

    # The engine server queues and batches requests itself: Serve's default of 5 requests at a time per replica
    # would starve its batches (bench/serving_platform.py).
    @serve.deployment(ray_actor_options={"num_cpus": 0, "resources": {REPLICA_RESOURCE: 1}},
                      max_replicas_per_node=1, health_check_period_s=5, max_ongoing_requests=MAX_ONGOING)
    class EngineReplica:
        def __init__(self, argv: list[str], engine_env: dict[str, str], health: str, ready_timeout_s: float,
                     model_uri: str = "", model_path: str = "", fetch_python: str = "", api_key_env: str = ""):
            import ray

            self.port = free_port()
            self.node = ray.get_runtime_context().get_node_id()
            if model_uri and model_path and not os.path.isdir(model_path):
                local = node_copy(model_uri, fetch_python)
                argv = [a.replace(model_path, local) for a in argv]
            engine_env = {**engine_env, **(node_api_key(api_key_env) if api_key_env else {})}
            self.key = {"Authorization": f"Bearer {engine_env[api_key_env]}"} if api_key_env else {}
            self.fetch_python = fetch_python
            adapters = state_dir() / "adapters" / "ray"  # where this replica fetches the adapters it is asked for
            if any(ray_adapters.ROOT_PLACEHOLDER in a for a in argv):
                adapters.mkdir(parents=True, exist_ok=True)
            argv = [a.replace("{port}", str(self.port)).replace(ray_adapters.ROOT_PLACEHOLDER, str(adapters))
                    for a in argv]
            self.proc = subprocess.Popen(argv, env={**environ(), **engine_env}, start_new_session=True,
                                         stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
            self.base = f"http://127.0.0.1:{self.port}"
            deadline = time.monotonic() + ready_timeout_s
            while not http_ok(self.base + health):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self._stop()
                    raise RuntimeError(f"engine server {argv[:4]} did not get ready (exit code {self.proc.poll()})")
                time.sleep(0.5)
            self.health, self.session = health, None

        def _stop(self) -> None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)

        def check_health(self) -> None:
            if self.proc.poll() is not None or not http_ok(self.base + self.health):
                raise RuntimeError(f"engine server (pid {self.proc.pid}) is gone or not answering")

        def __del__(self):
            self._stop()

        @serve.multiplexed(max_num_models_per_replica=ray_adapters.KNOWN_PER_REPLICA)
        async def adapter(self, model_id: str) -> ray_adapters.LoadedAdapter:
            """The adapter ``NAME=URI`` loaded in this replica's engine (fetched onto this node first)."""
            name, uri = ray_adapters.split_model_id(model_id)
            path = await asyncio.to_thread(node_copy, uri, self.fetch_python, "adapters")
            return await ray_adapters.load(self.session, self.base, self.key, name, path)

        async def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple:
            """(status, content type, body, node, pid) of the engine server's answer; for a request that names an
            adapter (Serve's multiplexed model id), with the adapter loaded and named as the body's model."""
            import aiohttp

            if self.session is None:  # one connection pool per replica, made on its event loop
                self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
            if model_id := serve.get_multiplexed_model_id():
                try:
                    adapter = await self.adapter(model_id)  # loaded for any request: a listing shows it too
                except ray_adapters.AdapterRefused as e:
                    return e.status, "application/json", e.body, self.node, self.proc.pid
                body = with_model(body, adapter.name) if body else body
            async with self.session.request(method, self.base + path, data=body, headers=headers) as r:
                return r.status, r.headers.get("content-type"), await r.read(), self.node, self.proc.pid

        async def __call__(self, request: Request) -> Response:
            headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
            status, media, body, node, pid = await self.forward(request.method, stripped(request), headers,
                                                                await request.body())
            return Response(body, status_code=status, media_type=media,
                            headers={"X-Fineflow-Node": node, "X-Fineflow-Pid": str(pid)})

    @serve.deployment(ray_actor_options={"num_cpus": 0}, health_check_period_s=5, max_ongoing_requests=MAX_ONGOING)
    class AliasRoute:
        """The stable route of model@alias: forwards to the version application ``user_config`` names."""

        def __init__(self):
            self.config: dict = {"target": "", "version": "", "model_id": ""}
            self.mirror = RayShadow()  # a candidate a share of requests is copied to (``ray_shadow``)
            context = serve.get_replica_context()
            self.replica, self.traffic = context.replica_id.unique_id, RayTraffic(context.app_name)

        def reconfigure(self, config: dict) -> None:
            self.config = config  # target, version, model_id; shadow, traffic (with model, fetch_python, api_key)

        def current(self) -> dict:
            return {k: v for k, v in self.config.items() if k != "shadow"}

        def __del__(self):
            if hasattr(self, "traffic"):
                self.traffic.close()  # what it recorded and has not written yet is written

        async def __call__(self, request: Request) -> Response:
            # It finishes where it started, and is copied where the mirror pointed then.
            config = self.config
            target, version, model_id, shadow = config["target"], config["version"], config["model_id"], \
                config.get("shadow")
            path, body, started = stripped(request), await request.body(), time.monotonic()
            if (own := await self.traffic.own(config, request.method, path, request.headers, body)) is not None:
                return own  # the route's own paths: feedback, its status
            headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
            handle = serve.get_app_handle(target)
            if model_id:  # an adapter version: its adapter on the shared base application
                handle = handle.options(multiplexed_model_id=model_id)
            copied = self.mirror.take(shadow, request.method, path)
            request_id = self.traffic.take(config, request.method, path)
            status, media, answer, node, pid = await handle.forward.remote(request.method, path, headers, body)
            if copied:  # production answered: the copy goes to the candidate off the client's path
                self.mirror.after(shadow, path, headers, body, body, {
                    "status": status, "latency_s": time.monotonic() - started, "body": kept(answer)})
            if request_id:  # recorded off the client's path too
                self.traffic.after(config, request_id, version, path, body, status, answer,
                                   time.monotonic() - started)
            return Response(answer, status_code=status, media_type=media,
                            headers={"X-Fineflow-Node": node, "X-Fineflow-Pid": str(pid),
                                     "X-Fineflow-Version": version, "X-Fineflow-Route": self.replica,
                                     **({HEADER: request_id} if request_id else {})})

    return EngineReplica, AliasRoute


def route_code_version() -> str:
    """The route's code, as Serve compares it: the servers' sources. ``serve.run`` gives every deployment a new
    random code version unless one is set, and a new code version replaces each replica (a rolling restart of the
    route, and a failed start fails the switch); with this one, a changed ``user_config`` only reconfigures the
    running replicas, and new fineflow code still starts new ones."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def alias_route(replicas: int, config: dict):
    """The model@alias route application: ``replicas`` AliasRoutes, forwarding as ``config`` says."""
    # Setting the version is internal in Serve's API since it manages versions itself; an imperative deploy has
    # no other way to an in-place reconfigure (tests/e2e/test_two_hosts.py checks the route's replica survives).
    return deployments()[1].options(num_replicas=replicas, user_config=config, version=route_code_version(),
                                    _internal=True).bind()


def connect(address: str, http: str | None = None):
    import ray
    from ray import serve

    ray.init(address=address, log_to_driver=False, namespace="serve")
    if http:  # the first start on a cluster decides; later ones only connect
        host, _, port = http.rpartition(":")
        # One proxy on the head at the address the URLs name; every node's proxy where it binds all addresses.
        serve.start(proxy_location="EveryNode" if host == "0.0.0.0" else "HeadOnly",
                    http_options={"host": host, "port": int(port)})
    return serve


def deploy(opts: argparse.Namespace, engine: list[str]) -> dict:
    serve = connect(opts.address, opts.http)
    replica = deployments()[0]
    scaling = json.loads(opts.autoscaling) if opts.autoscaling else None
    options = {"autoscaling_config": scaling} if scaling else {"num_replicas": opts.replicas}
    app = replica.options(**options).bind(engine, json.loads(env("FINEFLOW_ENGINE_ENV") or "{}"), opts.health,
                                          opts.ready_timeout_s, opts.model_uri, opts.model_path, opts.fetch_python,
                                          opts.api_key_env)
    serve.run(app, name=opts.app, route_prefix=opts.route, blocking=False)  # returns once every replica is ready
    return {"app": opts.app, "url": f"http://{opts.http}{opts.route.rstrip('/')}"}


def route(opts: argparse.Namespace) -> dict:
    serve = connect(opts.address, opts.http)
    config = {"target": opts.target, "version": opts.version, "model_id": opts.model_id,  # no shadow: a switch ends it
              "traffic": json.loads(opts.traffic) if opts.traffic else None, "model": opts.model,
              "fetch_python": opts.fetch_python, "bucket": opts.bucket, "api_key": opts.api_key}
    app = alias_route(opts.replicas, config)
    serve.run(app, name=opts.app, route_prefix=opts.route, blocking=False)  # in place: AliasRoute.reconfigure
    return {"app": opts.app, "url": f"http://{opts.http}{opts.route}"}


def applications(address: str) -> dict[str, dict]:
    """Each application on the cluster: its status and message, and its deployments' statuses."""
    serve = connect(address)
    return {name: {"status": str(getattr(app.status, "value", app.status)), "message": app.message,
                   "deployments": {d: str(getattr(s.status, "value", s.status)) for d, s in app.deployments.items()}}
            for name, app in serve.status().applications.items()}


def delete(address: str, app: str) -> dict:
    """Delete ``app``: Serve stops routing to it, its replicas finish their requests, then stop."""
    serve = connect(address)
    exists = app in serve.status().applications
    if exists:
        serve.delete(app, _blocking=True)
    return {"app": app, "deleted": exists}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["shutdown"] and len(args) == 2:
        connect(args[1]).shutdown()
        return print(f"Ray Serve on {args[1]} shut down", flush=True)
    if args[:1] and args[0].startswith("--"):
        args = legacy(args)
    engine: list[str] = []
    if "--" in args:
        args, engine = args[:args.index("--")], args[args.index("--") + 1:]
    opts = parser().parse_args(args)
    if opts.op == "deploy":
        if not engine:
            sys.exit("deploy needs the engine's argv after --")
        done = deploy(opts, engine)
        print(f"serving {opts.app}: {opts.replicas} replicas at {done['url']}", flush=True)
    elif opts.op == "route":
        done = route(opts)
    elif opts.op == "delete":
        done = delete(opts.address, opts.app)
    elif opts.op == "mirror":
        done = ray_shadow.mirror(connect(opts.address), alias_route, opts)
    elif opts.op == "pairs":
        connect(opts.address)
        done = ray_shadow.pairs(opts)
    else:
        done = applications(opts.address)
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    main()
