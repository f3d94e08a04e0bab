"""Blue/green promotion behind one stable URL, rollback, and bringing back what the registry says is serving.

- ``promote``: the candidate's endpoint is healthy (checked again here) -> the alias moves -> the model@alias's
  stable route switches to it on the endpoint's serving platform (``platforms``: a router on this machine, or a
  Ray Serve route) -> the requests in flight on the old endpoint finish -> the old endpoint stops. A failure
  before the switch leaves the alias, the route and the old endpoint as they were (a switch that fails moves the
  alias back). One promotion per model at a time, across every machine: the model's ``promote`` slot
  (``tasks.services.coordination``).
- ``rollback``: the alias goes back to the version it replaced (the version's tag ``previous_version``), its
  endpoint started again from the registered model if it is gone.
- ``restore``: every alias of every registered model served again, endpoint and router, from the registry
  (what ``make up`` runs after a machine restart), independent ones side by side.

A version records how to serve it again: tag ``deploy_config`` (the pipeline's deploy section, JSON, with the
prompt style), beside ``endpoint_name`` and ``endpoint_url``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from pydantic import BaseModel

from tasks import net
from tasks.files import slug
from tasks.models.local import holds_weights
from tasks.services import coordination, registry, storage
from tasks.serving import adapters, platforms
from tasks.serving.endpoints import Endpoint
from tasks.serving.start import recorded_engine, start_engine
from tasks.settings import state_dir

Log = Callable[[str], None]


class Promotion(BaseModel):
    model: str
    alias: str
    version: str
    previous_version: str | None
    url: str  # the stable route's: the same for every version


class NotPromoted(RuntimeError):
    """A promotion refused for a known reason: nothing moved, production keeps serving."""


class Unhealthy(NotPromoted):
    """The candidate's endpoint does not answer its health check."""


class Superseded(NotPromoted):
    """The alias moved while the candidate was on its way, to a version the candidate does not beat."""


def promote(model: str, alias: str, version: str, ep: Endpoint, record_previous: bool = True, log: Log = print,
            guard: Callable[[str | None], str | None] | None = None) -> Promotion:
    """Move ``alias`` to ``version`` (served by ``ep``) holding the model's promotion slot. ``guard``, given the
    version the alias holds now, may refuse (returning why): then ``Superseded`` is raised and nothing moves; an
    endpoint that is not healthy raises ``Unhealthy``."""
    platform = platforms.of_endpoint(ep)
    with coordination.slot("promote", model, log=log):
        if not ep.healthy():
            raise Unhealthy(f"endpoint {ep.name} at {ep.url} is not healthy: version {version} is not promoted")
        previous = registry.alias_version(model, alias)
        if guard and (why := guard(previous)):
            raise Superseded(why)
        url = platform.route(model, alias, ep)
        registry.move_alias(model, alias, version)
        try:
            old_target = platform.switch(model, alias, ep, version)
        except Exception:
            if previous:
                registry.move_alias(model, alias, previous)
            raise
        log(f"moved alias {alias} -> version {version} of {model}, served at {url} (was {previous or 'none'})")
        if record_previous and previous and previous != version:
            registry.set_tag(model, version, "previous_version", previous)
        registry.client().set_registered_model_tag(model, f"url_{alias}", url)
        if previous and previous != version:
            tags = registry.version_tags(model, previous)
            old = tags.get("endpoint_name")
            if old and old != ep.name and platforms.of_tags(tags).retire(model, alias, old, old_target, log):
                log(f"stopped replaced endpoint {old} (version {previous})")
        return Promotion(model=model, alias=alias, version=version, previous_version=previous, url=url)


def serving_endpoint(model: str, version: str, log: Log = print) -> Endpoint:
    """The endpoint of ``version``: the running one if it answers, else started again from the registered model as
    its tag ``deploy_config`` says, on the platform it names (its files downloaded from the registry's source when
    they are not on this machine any more), at its recorded URL when that port is free."""
    tags = registry.version_tags(model, version)
    config = json.loads(tags["deploy_config"]) if "deploy_config" in tags else None
    platform = platforms.of_relaunch(config)
    current = platform.get(tags.get("endpoint_name", ""))
    if current and current.healthy():
        current.relaunch = current.relaunch or config
        return current
    if config is None:
        raise RuntimeError(f"{model} version {version} records no deploy_config: it cannot be served again")
    if config["deploy"].get("serve") == "adapter":  # its adapter, loaded again on its base's shared endpoint
        return adapters.serve_again(model, version, tags, config, log)
    model_path = current.model_path if current and holds_weights(current.model_path) else \
        download_version(model, version, log)
    old_port = urlparse(tags.get("endpoint_url", "")).port
    # The version's recorded URL stays right where its port is free.
    engine = recorded_engine(config, model_path, model,
                             port=old_port if old_port and net.port_free(old_port) else None)
    name = tags.get("endpoint_name") or f"{slug(model)}-v{version}"
    engine.preflight()  # an engine that cannot start here says so before the old process is touched
    platform.stop(name)
    log(f"starting {model} version {version} ({engine.engine}, {platform.name} platform) again ...")
    ep = start_engine(engine, model_path, name, api_key=config["deploy"].get("api_key", True), relaunch=config,
                      model_uri=registry.files_uri(model, version), log=log).endpoint
    registry.set_tag(model, version, "endpoint_url", ep.url)
    return ep


def download_version(model: str, version: str, log: Log = print) -> str:
    """The registered files of ``version`` on this machine (``FINEFLOW_HOME/models``), fetched once, whole."""
    target = state_dir() / "models" / slug(model) / version
    if not holds_weights(target):
        source = registry.files_uri(model, version)
        log(f"downloading {model} version {version} from {source} ...")
        storage.fetch(source, target)
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
    done = promote(model, alias, previous, ep, record_previous=False, log=log)
    registry.set_tag(model, current, "status", "rolled_back")
    return done


RESTORE_WORKERS = min(4, os.cpu_count() or 1)  # starts are mostly imports and weight loading: CPU-bound


def restore(models: Collection[str] = (), log: Log = print) -> list[Promotion]:
    """Serve again every alias of every registered model (or of ``models`` only) whose endpoint or route is gone.

    Independent starts run side by side (``RESTORE_WORKERS``); what shares something is started in order: a
    model's aliases (two may name one version, one endpoint), every adapter version (adapters share base
    endpoints), every version on a platform without ``concurrent_starts``."""
    aliases = [(rm.name, alias, str(version)) for rm in registry.client().search_registered_models()
               if not models or rm.name in models for alias, version in (rm.aliases or {}).items()]
    groups: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for model, alias, version in aliases:
        groups.setdefault(restore_group(model, version), []).append((model, alias, version))
    lock = threading.Lock()

    def said(line: str) -> None:  # one line at a time: print writes a line and its end apart
        with lock:
            log(line)

    with ThreadPoolExecutor(RESTORE_WORKERS, thread_name_prefix="restore") as pool:
        done = dict(pair for group in pool.map(
            lambda group: [(entry, restore_alias(*entry, said)) for entry in group], groups.values()) for pair in group)
    return [p for entry in aliases if (p := done[entry])]  # in the registry's order


def restore_group(model: str, version: str) -> tuple[str, str]:
    """What a version's start shares with others' (see ``restore``): versions of one group start in order."""
    try:
        tags = registry.version_tags(model, version)
        config = json.loads(tags["deploy_config"]) if "deploy_config" in tags else None
        adapter = bool(config) and config["deploy"].get("serve") == "adapter"
        platform = platforms.of_relaunch(config)
    except Exception:  # noqa: BLE001 (a record that cannot be read or reached: restore_alias says why)
        return ("model", model)
    if not platform.concurrent_starts:
        return ("platform", platform.name)
    return ("adapters", "") if adapter else ("model", model)


def restore_alias(model: str, alias: str, version: str, log: Log = print) -> Promotion | None:
    """``model@alias`` served again by ``version``; None (said in the log) when it cannot be, so that one model
    that cannot come back does not keep the others down."""
    try:
        ep = serving_endpoint(model, version, log)
        platform = platforms.of_endpoint(ep)
        url = platform.route(model, alias, ep)
        platform.switch(model, alias, ep, version)
    except Exception as e:
        log(f"{model}@{alias}: version {version} could not be served again: {e}")
        return None
    log(f"{model}@{alias}: version {version} serving at {url}")
    return Promotion(model=model, alias=alias, version=version, previous_version=None, url=url)
