"""The Ray platform: versions and routes are Ray Serve applications on a Ray cluster (``tasks.servers.ray_serve``).

- a version endpoint ``NAME`` is the application ``NAME`` at ``/_v/NAME`` on Serve's proxy: ``replicas`` engine
  servers (or Serve's autoscaling between its bounds), at most one per node, each fetching the model's files from
  the bucket when its node lacks them, each reading the API key on its own node;
- ``model@alias`` is the application ``MODEL@ALIAS`` at ``/MODEL/ALIAS``: moving it to a new version is Serve's
  in-place reconfigure of its route, then the old version's application is deleted (its replicas finish the
  requests they hold, then stop);
- an adapter version (``deploy.serve: adapter``) is its adapter on the application of its base, named by Serve's
  multiplexed model id (``tasks.servers.ray_adapters``): each replica fetches and loads it on its node when first
  asked for it, and unloads the least recently used; its alias routes to the base with that id. Nothing is loaded
  or unloaded from here, so a replica Serve starts again serves every adapter it is asked for;
- a shadow canary (``promotion.canary``): the alias route copies a share of its requests to the candidate's
  application through Serve and keeps each pair in an actor on the cluster (``tasks.servers.ray_shadow``);
- ``deploy.traffic``: the alias route records requests and answers to the bucket from its nodes and takes
  ``POST /v1/feedback`` (``tasks.servers.ray_traffic``).

Each operation is a short driver run in the ``ray`` environment (this process need not import Ray). Nothing of
it lives on the worker that ran the deploy step: the cluster keeps serving when that worker, or its machine, is
gone, and any worker that can reach the head can promote, roll back or restore.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tasks.core import Command
from tasks.deploy.base import LazyLLMDeployBase
from tasks.deploy.ray import replica_argv, serve_driver
from tasks.files import slug
from tasks.masking import redact_text
from tasks.servers.ray_adapters import MODEL_ID_HEADER, ROOT_PLACEHOLDER, model_id
from tasks.servers.ray_node import CLIENT_SERVER_FAILED, CONNECT_PAUSE_S, CONNECT_RETRIES
from tasks.services import keys
from tasks.serving.endpoints import Endpoint
from tasks.serving.platforms.base import Log, ServingPlatform, head_silent, ray_node_here
from tasks.settings import REPO_ROOT, Settings, environ, state_dir


class RayServeError(RuntimeError):
    pass


class RayPlatform(ServingPlatform):
    name = "ray"
    fetches_models = True

    def drive(self, args: list[str], engine_env: dict[str, str] | None = None, timeout_s: float = 900,
              log_name: str = "ray-serve") -> dict:
        """Run one driver operation on the cluster; its last line of output is its JSON answer."""
        address = str(self.section.address)
        if silent := head_silent(address):
            raise RayServeError(f"Ray Serve {args[0]} on {address}: {silent}")
        if not address.startswith("ray://") and not ray_node_here():  # its driver would wait minutes, then fail
            raise RayServeError(f"Ray Serve {args[0]} on {address}: a head's GCS port serves a driver only on a "
                                "node of the cluster, and this machine runs no Ray node (a version served through "
                                "it is driven from a node of its cluster, or served again through the client "
                                "server: serving.address ray://HEAD:10001)")
        command = serve_driver([args[0], "--address", str(self.section.address), *args[1:]], engine_env)
        log_path = state_dir() / "logs" / f"{log_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1 + CONNECT_RETRIES):
            proc = subprocess.run(command.argvs[-1], env={**environ(), **command.env}, cwd=REPO_ROOT, text=True,
                                  capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
            with open(log_path, "a") as log:
                log.write(redact_text(proc.stdout + proc.stderr))
            if proc.returncode == 0 or CLIENT_SERVER_FAILED not in proc.stderr or attempt == CONNECT_RETRIES:
                break
            time.sleep(CONNECT_PAUSE_S * (attempt + 1))  # the driver never connected, so nothing was done: run it again
        if proc.returncode != 0:
            raise RayServeError(f"Ray Serve {args[0]} on {self.section.address} failed (exit {proc.returncode}); "
                                f"log {log_path}:\n{redact_text(proc.stderr[-2000:])}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def _url(self, route: str) -> str:
        return f"http://{self.section.http}{route}"

    def _endpoint(self, name: str, **fields) -> Endpoint:
        return Endpoint(name=name, url=self._url(f"/_v/{name}"), pid=0, backend=fields.pop("backend", "ray"),
                        argv=fields.pop("argv", []), model_path=fields.pop("model_path", ""),
                        log_path=str(state_dir() / "logs" / f"ray-{name}.log"), started_at=time.time(),
                        serving=self.section.model_dump(mode="json"), **fields)

    def start(self, name: str, command: Command, engine: LazyLLMDeployBase, model_path: str, model_uri: str,
              api_key: bool, relaunch: dict | None) -> Endpoint:
        if len(command.argvs) > 1:
            raise RayServeError(f"deploy engine {engine.engine!r} prepares its server in {len(command.argvs) - 1} "
                                "step(s) first; the Ray platform starts only an engine's server: serve it locally")
        argv = replica_argv(command)
        scale = ["--autoscaling", json.dumps(self.section.autoscaling)] if self.section.autoscaling else \
            ["--replicas", str(self.section.replicas)]
        key = ["--api-key-env", str(engine.api_key_env)] if api_key else []
        self.drive(["deploy", "--http", str(self.section.http), "--app", name, "--route", f"/_v/{name}", *scale,
                    "--ready-timeout-s", str(command.ready_timeout_s), "--model-uri", model_uri, "--model-path",
                    model_path, "--fetch-python", sys.executable, *key, "--", *argv],
                   engine_env=command.env, log_name=f"ray-{name}")
        return self._endpoint(name, backend=engine.engine, argv=argv, model_path=model_path,
                              api_key_file=str(keys.key_path()) if api_key else None, relaunch=relaunch)

    def applications(self) -> dict[str, dict]:
        return self.drive(["status"], timeout_s=120)

    def get(self, name: str) -> Endpoint | None:
        app = self.applications().get(name)
        return self._endpoint(name) if app and app["status"] == "RUNNING" else None

    def stop(self, name: str) -> bool:
        return bool(self.drive(["delete", "--app", name])["deleted"])

    def route(self, model: str, alias: str, ep: Endpoint) -> str:
        return self._url(f"/{slug(model)}/{slug(alias)}")

    def switch(self, model: str, alias: str, ep: Endpoint, version: str) -> str | None:
        deploy = (ep.relaunch or {}).get("deploy") or {}
        traffic = deploy.get("traffic")
        # The key guards feedback unless the version was deployed without one (an endpoint found running on the
        # cluster, as a restore or a rollback finds it, records no key file).
        keyed = bool(ep.api_key_file) or bool(deploy.get("api_key", True))
        self.drive(["route", "--http", str(self.section.http), "--app", f"{model}@{alias}", "--route",
                    f"/{slug(model)}/{slug(alias)}", "--target", ep.base or ep.name, "--version", version,
                    "--model-id", ep.route_headers.get(MODEL_ID_HEADER, ""), "--replicas", str(self.section.replicas),
                    "--model", model, "--fetch-python", sys.executable, "--bucket", Settings.load().s3_bucket,
                    "--traffic", json.dumps(traffic) if traffic else "", *([] if keyed else ["--no-api-key"])])
        return None

    def retire(self, model: str, alias: str, old_name: str, old_target: str | None, log: Log) -> bool:
        # Serve drains the application's replicas before they stop; an adapter version has no application: its
        # base's replicas unload it when it is their least recently used.
        return self.stop(old_name)

    def route_status(self, model: str, alias: str) -> str:
        app = self.applications().get(f"{model}@{alias}")
        return f"{self.route(model, alias, None)}\tray {app['status'] if app else 'no route'}"  # type: ignore[arg-type]

    # The alias route copies to a canary (``ray_shadow``) and records traffic and feedback (``ray_traffic``).
    mirrors = records = True

    def mirror(self, model: str, alias: str, candidate: Endpoint, shadow: dict | None) -> None:
        """The alias route copies to the candidate's application through Serve (``tasks.servers.ray_shadow``), the
        pairs kept on the cluster until ``mirrored`` reads them."""
        spec = {"target": candidate.base or candidate.name, "version": candidate.name,
                "model_id": candidate.route_headers.get(MODEL_ID_HEADER, ""), "share": shadow["share"],
                "pairs": shadow["pairs"], "max_pairs": shadow["max_pairs"]} if shadow else None
        self.drive(["mirror", "--app", f"{model}@{alias}", "--route", f"/{slug(model)}/{slug(alias)}",
                    "--replicas", str(self.section.replicas), "--shadow", json.dumps(spec) if spec else ""])

    def mirrored(self, model: str, alias: str, pairs: str) -> list[dict]:
        """Read from the cluster, and written to the file ``pairs`` here too (what the canary and its tests read)."""
        kept = self.drive(["pairs", "--app", f"{model}@{alias}"], timeout_s=180)["pairs"]
        Path(pairs).touch(mode=0o600)  # owner-only, as the local router writes them
        Path(pairs).write_text("".join(json.dumps(pair) + "\n" for pair in kept))
        return kept

    def adapter_root(self) -> str:
        return ROOT_PLACEHOLDER  # each replica's own folder on its node

    def load_adapter(self, base: Endpoint, name: str, adapter_dir: str, adapter_uri: str,
                     relaunch: dict | None) -> Endpoint:
        """The adapter's endpoint on the base's application: requests carry its multiplexed model id, and the
        replica that gets one loads the adapter from ``adapter_uri`` first."""
        if not adapter_uri:
            raise RayServeError(f"adapter {name}: the Ray platform's nodes fetch adapters from the bucket, and no "
                                "URI of its files was given")
        key = ((relaunch or {}).get("deploy") or {}).get("api_key", True)  # the base's too: it names the base
        return base.model_copy(update={"name": name, "model_path": adapter_dir, "relaunch": relaunch,
                                       "adapter": name, "base": base.name,
                                       "api_key_file": str(keys.key_path()) if key else None,
                                       "route_headers": {MODEL_ID_HEADER: model_id(name, adapter_uri)}})

    def unload_adapter(self, name: str) -> bool:
        return False  # nothing to do from here: each replica unloads its least recently used adapters
