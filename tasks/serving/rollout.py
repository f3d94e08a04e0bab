"""Blue/green promotion behind one stable URL, rollback, and bringing back what the registry says is serving.

- ``promote``: the candidate's endpoint is healthy (checked again here) -> the alias moves -> the model's router
  (``router.py``; started on first use, on a port kept for good) switches to it -> the requests in flight on
  the old endpoint finish -> the old endpoint stops. A failure before the switch leaves the alias, the router
  and the old endpoint as they were (a switch that fails moves the alias back). One promotion per model at a
  time: a lock file under ``FINEFLOW_HOME`` serializes them on this machine.
- ``rollback``: the alias goes back to the version it replaced (the version's tag ``previous_version``), its
  endpoint started again from the registered model if it is gone.
- ``restore``: every alias of every registered model served again, endpoint and router, from the registry
  (what ``make up`` runs after a machine restart).

A version records how to serve it again: tag ``deploy_config`` (the pipeline's deploy section, JSON, with the
prompt style), beside ``endpoint_name`` and ``endpoint_url``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel

from tasks import files, net
from tasks.core import Command
from tasks.models.local import holds_weights
from tasks.servers.router import drain, read_state, switch, write_state
from tasks.services import registry, storage
from tasks.serving import endpoints
from tasks.serving.endpoints import Endpoint
from tasks.serving.start import recorded_engine, start_engine
from tasks.settings import state_dir

Log = Callable[[str], None]


class Promotion(BaseModel):
    model: str
    alias: str
    version: str
    previous_version: str | None
    url: str  # the router's: the same for every version


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def router_state_path(model: str, alias: str) -> Path:
    return state_dir() / "routers" / f"{_slug(model)}@{_slug(alias)}.json"


def router_name(model: str, alias: str) -> str:
    return f"router-{_slug(model)}-{_slug(alias)}"


@contextmanager
def model_lock(model: str) -> Iterator[None]:
    """One promotion (or rollback) of ``model`` at a time, across processes on this machine."""
    with files.locked(state_dir() / "locks" / f"{_slug(model)}.lock"):
        yield


def ensure_router(model: str, alias: str, host: str = "127.0.0.1") -> str:
    """The router of ``model@alias`` running (started if needed, on its kept port); returns its URL."""
    path = router_state_path(model, alias)
    state = read_state(path)
    if "port" not in state:
        state = {"model": f"{model}@{alias}", "port": net.free_port(), "host": host}
        write_state(path, state)
    url = f"http://{state.get('host', host)}:{state['port']}"
    current = endpoints.get(router_name(model, alias))
    if current and current.alive() and net.http_ok(f"{url}/router/status"):
        return url
    endpoints.stop(router_name(model, alias))
    argv = [sys.executable, "-m", "tasks.servers.router", "--state", str(path), "--host",
            state.get("host", host)]
    # The router answers /router/status once it listens, target or not.
    endpoints.start(router_name(model, alias), Command(argv, return_value=url, checker=net.ready(
        f"{url}/router/status"), ready_timeout_s=30), "router", model_path="")
    return url


class NotPromoted(RuntimeError):
    """A promotion refused for a known reason: nothing moved, production keeps serving."""


class Unhealthy(NotPromoted):
    """The candidate's endpoint does not answer its health check."""


class Superseded(NotPromoted):
    """The alias moved while the candidate was on its way, to a version the candidate does not beat."""


def promote(model: str, alias: str, version: str, ep: Endpoint, host: str = "127.0.0.1",
            record_previous: bool = True, log: Log = print,
            guard: Callable[[str | None], str | None] | None = None) -> Promotion:
    """Move ``alias`` to ``version`` (served by ``ep``) under the model's lock. ``guard``, given the version the
    alias holds now, may refuse (returning why): then ``Superseded`` is raised and nothing moves; an endpoint that
    is not healthy raises ``Unhealthy``."""
    with model_lock(model):
        if not ep.healthy():
            raise Unhealthy(f"endpoint {ep.name} at {ep.url} is not healthy: version {version} is not promoted")
        previous = registry.alias_version(model, alias)
        if guard and (why := guard(previous)):
            raise Superseded(why)
        url = ensure_router(model, alias, host)
        registry.move_alias(model, alias, version)
        try:
            old_target = switch(router_state_path(model, alias), ep.url, version)
        except Exception:
            if previous:
                registry.move_alias(model, alias, previous)
            raise
        log(f"moved alias {alias} -> version {version} of {model}, served at {url} (was {previous or 'none'})")
        if record_previous and previous and previous != version:
            registry.set_tag(model, version, "previous_version", previous)
        registry.client().set_registered_model_tag(model, f"url_{alias}", url)
        if previous and previous != version:
            old = registry.version_tags(model, previous).get("endpoint_name")
            if old and old != ep.name:
                if old_target and not drain(url, old_target):
                    log(f"requests still running on {old_target} after the wait; stopping it anyway")
                if endpoints.stop(old):
                    log(f"stopped replaced endpoint {old} (version {previous})")
        return Promotion(model=model, alias=alias, version=version, previous_version=previous, url=url)


def serving_endpoint(model: str, version: str, log: Log = print) -> Endpoint:
    """The endpoint of ``version``: the running one if it answers, else started again from the registered model as
    its tag ``deploy_config`` says (its files downloaded from the registry's source when they are not on this
    machine any more), at its recorded URL when that port is free."""
    tags = registry.version_tags(model, version)
    current = endpoints.get(tags.get("endpoint_name", ""))
    if current and current.healthy():
        return current
    if "deploy_config" not in tags:
        raise RuntimeError(f"{model} version {version} records no deploy_config: it cannot be served again")
    config = json.loads(tags["deploy_config"])
    model_path = current.model_path if current and holds_weights(current.model_path) else \
        download_version(model, version, log)
    old_port = urlparse(tags.get("endpoint_url", "")).port
    # The version's recorded URL stays right where its port is free.
    engine = recorded_engine(config, model_path, model,
                             port=old_port if old_port and net.port_free(old_port) else None)
    name = tags.get("endpoint_name") or f"{_slug(model)}-v{version}"
    engine.preflight()  # an engine that cannot start here says so before the old process is touched
    endpoints.stop(name)
    log(f"starting {model} version {version} ({engine.engine}) again ...")
    ep = start_engine(engine, model_path, name, api_key=config["deploy"].get("api_key", True), relaunch=config,
                      log=log).endpoint
    registry.set_tag(model, version, "endpoint_url", ep.url)
    return ep


def download_version(model: str, version: str, log: Log = print) -> str:
    """The registered files of ``version`` on this machine (``FINEFLOW_HOME/models``), fetched once, whole."""
    target = state_dir() / "models" / _slug(model) / version
    if not holds_weights(target):
        source = registry.files_uri(model, version)
        log(f"downloading {model} version {version} from {source} ...")
        with files.filling(target) as partial:
            storage.download_dir(source, partial)
    return str(target)


def rollback(model: str, alias: str = "production", log: Log = print) -> Promotion:
    """Move ``alias`` back to the version the current one replaced; the current one is tagged rolled back."""
    current = registry.alias_version(model, alias)
    if current is None:
        raise ValueError(f"{model} has no {alias} version to roll back")
    previous = registry.version_tags(model, current).get("previous_version")
    if not previous:
        raise ValueError(f"{model} version {current} replaced no earlier version: nothing to roll back to")
    ep = serving_endpoint(model, previous, log)
    done = promote(model, alias, previous, ep, host=urlparse(ep.url).hostname or "127.0.0.1",
                   record_previous=False, log=log)
    registry.set_tag(model, current, "status", "rolled_back")
    return done


def restore(log: Log = print) -> list[Promotion]:
    """Serve again every alias of every registered model whose endpoint or router is gone."""
    done = []
    for rm in registry.client().search_registered_models():
        for alias, version in (rm.aliases or {}).items():
            try:
                ep = serving_endpoint(rm.name, str(version), log)
                url = ensure_router(rm.name, alias, urlparse(ep.url).hostname or "127.0.0.1")
                switch(router_state_path(rm.name, alias), ep.url, str(version))
                done.append(Promotion(model=rm.name, alias=alias, version=str(version), previous_version=None,
                                      url=url))
                log(f"{rm.name}@{alias}: version {version} serving at {url}")
            except Exception as e:  # one model that cannot come back does not keep the others down
                log(f"{rm.name}@{alias}: version {version} could not be served again: {e}")
    return done
