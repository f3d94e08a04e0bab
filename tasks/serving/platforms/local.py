"""The local platform: versions are endpoint process groups on this machine (``tasks.serving.endpoints``) or LoRA
adapters on a shared base endpoint (``tasks.serving.adapter_endpoints``), each model@alias a router
(``tasks.servers.router``) on a port kept in ``$FINEFLOW_HOME/routers/``, so its URL
survives promotions, rollbacks and restarts. The default, and what ``make demo`` runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlparse

from tasks import net
from tasks.core import Command
from tasks.deploy.base import LazyLLMDeployBase
from tasks.files import slug
from tasks.servers.router import drain, mirror_to, read_state, switch, write_state
from tasks.services import keys
from tasks.serving import adapter_endpoints, endpoints
from tasks.serving.endpoints import Endpoint
from tasks.serving.platforms.base import Log, ServingPlatform
from tasks.settings import state_dir


def router_state_path(model: str, alias: str) -> Path:
    return state_dir() / "routers" / f"{slug(model)}@{slug(alias)}.json"


def router_name(model: str, alias: str) -> str:
    return f"router-{slug(model)}-{slug(alias)}"


def ensure_router(model: str, alias: str, host: str = "127.0.0.1") -> str:
    """The router of ``model@alias`` running (started if needed, on its kept port); returns its URL."""
    path = router_state_path(model, alias)
    state = read_state(path)
    if "port" not in state:
        state = {"model": f"{model}@{alias}", "port": net.free_port(), "host": host}
        write_state(path, state)
    url = f"http://{state.get('host', host)}:{state['port']}"
    current = endpoints.get(router_name(model, alias))
    if current and current.alive() and net.http_ok(f"{url}/router/health"):
        return url
    endpoints.stop(router_name(model, alias))
    argv = [sys.executable, "-m", "tasks.servers.router", "--state", str(path), "--host",
            state.get("host", host)]
    # The router answers /router/health once it listens, target or not; it checks the key before reading a body.
    endpoints.start(router_name(model, alias), Command(argv, env={"FINEFLOW_API_KEY": keys.api_key()},
                                                       return_value=url, checker=net.ready(f"{url}/router/health"),
                                                       ready_timeout_s=30), "router", model_path="")
    return url


class LocalPlatform(ServingPlatform):
    name = "local"
    concurrent_starts = True  # each version its own process group, each route its own router and state file

    def start(self, name: str, command: Command, engine: LazyLLMDeployBase, model_path: str, model_uri: str,
              api_key: bool, relaunch: dict | None) -> Endpoint:
        if api_key:
            command = engine.with_api_key(command, keys.api_key())
        return endpoints.start(name, command, engine.engine, model_path,
                               api_key_file=str(keys.key_path()) if api_key else None, relaunch=relaunch)

    def get(self, name: str) -> Endpoint | None:
        return endpoints.get(name) or adapter_endpoints.get(name)

    def stop(self, name: str) -> bool:
        """An endpoint's processes stopped, or an adapter unloaded from its shared base (which keeps serving)."""
        return endpoints.stop(name) or adapter_endpoints.unload(name)

    def route(self, model: str, alias: str, ep: Endpoint) -> str:
        return ensure_router(model, alias, urlparse(ep.url).hostname or "127.0.0.1")

    def switch(self, model: str, alias: str, ep: Endpoint, version: str) -> str | None:
        return switch(router_state_path(model, alias), ep.url, version, api_key=bool(ep.api_key_file),
                      adapter=ep.adapter, traffic=((ep.relaunch or {}).get("deploy") or {}).get("traffic"))

    def retire(self, model: str, alias: str, old_name: str, old_target: str | None, log: Log) -> bool:
        url = f"http://{(s := read_state(router_state_path(model, alias))).get('host')}:{s.get('port')}"
        if old_target and not drain(url, old_target, keys.auth_headers()):
            log(f"requests still running on {old_target} after the wait; stopping it anyway")
        return self.stop(old_name)

    def route_status(self, model: str, alias: str) -> str:
        state = read_state(router_state_path(model, alias))
        router = endpoints.get(router_name(model, alias))
        up = "up" if router and router.alive() else "down"
        url = f"http://{state.get('host', '127.0.0.1')}:{state['port']}" if state.get("port") else "-"
        return f"{url}\trouter {up}\t-> {state.get('target', '-')}"

    mirrors = records = True

    def mirror(self, model: str, alias: str, candidate: Endpoint, shadow: dict | None) -> None:
        target = {"target": candidate.url, "adapter": candidate.adapter, "api_key": bool(candidate.api_key_file),
                  "version": candidate.name}
        mirror_to(router_state_path(model, alias), {**target, **shadow} if shadow else None)

    def adapter_root(self) -> str:
        return str(adapter_endpoints.root(create=False))

    def adapter_state(self, base_name: str) -> str:
        return str(adapter_endpoints.root(create=False) / "bases" / f"{base_name}.json")

    def load_adapter(self, base: Endpoint, name: str, adapter_dir: str, adapter_uri: str,
                     relaunch: dict | None) -> Endpoint:
        """Loaded now through the base's runtime LoRA route, and recorded; one loaded on this base already is
        kept."""
        current = adapter_endpoints.get(name)
        if current and current.url == base.url:
            return current
        adapter_endpoints.unload(name)  # a record left on a base that is gone
        return adapter_endpoints.load(base, name, adapter_dir, relaunch)

    def unload_adapter(self, name: str) -> bool:
        return adapter_endpoints.unload(name)
