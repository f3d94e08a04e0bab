"""Many finetunes, one base: versions served as LoRA adapters on the endpoint their base model shares
(``deploy.serve: adapter``).

One base endpoint per base model revision and server settings on this machine, started the first time an adapter
of that base is served and kept (``base-<model>-<engine>-<hash>``). A version is its adapter loaded there under the
version's endpoint name, checked against the base revision first, then smoke-tested through the shared endpoint
(``model`` names the adapter). Promoting it moves the model@alias route to it (the router sets ``model`` in each
request); the replaced version's adapter is unloaded after its requests finish, and every other adapter of the base
answers throughout. ``serve_again`` loads a registered version's adapter again (a rollback, a restore).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.files import slug
from tasks.models import mirror
from tasks.models.local import revision_of
from tasks.servers.adapters import BASE_RECORD
from tasks.services import coordination, registry, storage
from tasks.serving import adapter_endpoints, platforms
from tasks.serving.endpoints import Endpoint
from tasks.serving.start import Started, recorded_engine, start_engine
from tasks.settings import Settings

Log = Callable[[str], None]


class BaseMismatch(ValueError):
    """An adapter trained on another revision of the base than the endpoint serves."""


def base_record(adapter_dir: str | Path) -> dict[str, str]:
    """What an adapter folder records of its base (``fineflow_base.json``): base_model, base_model_path,
    base_model_revision."""
    path = Path(adapter_dir) / BASE_RECORD
    if not path.exists():
        raise BaseMismatch(f"{adapter_dir} records no base model ({BASE_RECORD}): it cannot be served on a base")
    return json.loads(path.read_text())


# What a pipeline's deploy section may change without changing the shared server: how answers are shaped (the
# client side), and that its versions are adapters.
PER_VERSION = ("formatter", "formatter_selector", "serve", "traffic")
READY_WAIT_S = 120  # a base that runs but does not answer yet (restarting, or a busy machine) is waited for


def base_endpoint_name(base_name: str, revision: str, relaunch: dict) -> str:
    """The shared endpoint of a base: one per base revision and server settings (engine, its params, key, host,
    max_adapters, prompt style), so a pipeline never gets another's server settings; a file name."""
    server = {k: v for k, v in relaunch["deploy"].items() if k not in PER_VERSION}
    digest = hashlib.sha256(json.dumps([revision, server, relaunch["prompt_style"]], sort_keys=True).encode())
    return f"base-{slug(base_name)}-{relaunch['deploy']['backend']}-{digest.hexdigest()[:12]}"


def ensure_base(relaunch: dict, base_path: str, base_name: str, max_adapters: int, log: Log = print) -> Endpoint:
    """The shared endpoint of the base at ``base_path``, serving adapters, with the engine ``relaunch`` records
    (the deploy section and prompt style): the running one (waited for while it runs without answering), or
    started now (one start at a time per base)."""
    revision = revision_of(base_path)
    name = base_endpoint_name(base_name, revision, relaunch)
    platform = platforms.of_relaunch(relaunch)
    with coordination.slot("serve", name, log=log):
        current = platform.get(name)
        deadline = time.monotonic() + READY_WAIT_S
        while current and current.alive() and not current.healthy() and time.monotonic() < deadline:
            time.sleep(1)  # restarted by its supervisor, or slow on a busy machine: not a second copy
        if current and current.healthy():
            return current
        platform.stop(name)  # a base that never answered again: its adapters are loaded on the new one
        engine = recorded_engine(relaunch, base_path, base_name)
        engine.with_adapters(max_adapters, revision, platform.adapter_root(), platform.adapter_state(name))
        log(f"starting the shared endpoint {name} of {base_name} ({engine.engine}, up to {max_adapters} adapters "
            "in memory) ...")
        model_uri = base_in_bucket(base_path, revision, log) if platform.fetches_models else ""
        return start_engine(engine, base_path, name, api_key=relaunch["deploy"].get("api_key", True),
                            relaunch=relaunch, model_uri=model_uri, log=log).endpoint


def base_uri(revision: str) -> str:
    """Where a base model's files at ``revision`` are mirrored in the bucket."""
    return f"s3://{Settings.load().s3_bucket}/bases/{hashlib.sha256(revision.encode()).hexdigest()[:24]}"


def base_in_bucket(base_path: str, revision: str, log: Log = print) -> str:
    """The base model's files in the bucket (``base_uri``), mirrored once per revision, its manifest written last,
    for a platform whose nodes fetch a model where they lack it."""
    uri = base_uri(revision)
    if not storage.exists(f"{uri}/{mirror.MANIFEST}"):
        log(f"copying the base model {base_path} to {uri}, where the serving platform's nodes fetch it ...")
        mirror.upload_model(base_path, uri)
    return uri


def serve(relaunch: dict, adapter_dir: str, name: str, smoke_records: list[dict] | None = None,
          formatter: Callable[[Any], Any] | None = None, log: Log = print, adapter_uri: str = "") -> Started:
    """Serve the adapter in ``adapter_dir`` (under ``adapter_endpoints.root()``; the same files as ``adapter_uri``
    in the bucket, where a cluster's nodes fetch them) as ``name`` on its base's shared endpoint, and smoke-test it
    there on ``smoke_records`` (an adapter that fails is unloaded). An adapter whose recorded base revision is not
    the base's is refused (``BaseMismatch``) before anything loads."""
    base = base_record(adapter_dir)
    base_path = base["base_model_path"]
    if not Path(base_path).is_dir():
        raise BaseMismatch(f"adapter {name}: its base model {base['base_model']} is not at {base_path} on this "
                           "machine")
    if (revision := revision_of(base_path)) != base["base_model_revision"]:
        raise BaseMismatch(f"adapter {name} was trained on {base['base_model']} at revision "
                           f"{base['base_model_revision']}; {base_path} is at revision {revision} now")
    shared = ensure_base(relaunch, base_path, base["base_model"], relaunch["deploy"].get("max_adapters", 8), log)
    platform = platforms.of_relaunch(relaunch)
    with coordination.slot("serve", name, log=log):  # a rollback and a restore of one version: one load
        ep = platform.load_adapter(shared, name, adapter_dir, adapter_uri, relaunch)
        if smoke_records is None:
            return Started(ep, None, "loaded; no smoke test")
        engine = recorded_engine(relaunch, base_path, name)  # a request for model ``name``: the adapter
        try:
            answer, shown = engine.smoke_test(shared.url, smoke_records, ep.headers(), base_path,
                                              prompt_style=relaunch["prompt_style"],
                                              formatter=formatter)
        except Exception:
            platform.unload_adapter(name)
            raise
    log(f"adapter {name} loaded on {shared.name} at {shared.url}")
    return Started(ep, answer, shown)


def serve_again(model: str, version: str, tags: dict[str, str], relaunch: dict, log: Log = print) -> Endpoint:
    """Load registered ``version``'s adapter again on its base's endpoint (starting it if gone), its files fetched
    from the registry's source when this machine lacks them."""
    folder = adapter_endpoints.root() / "files" / slug(model) / version
    source = registry.files_uri(model, version)
    if not (folder / BASE_RECORD).exists():
        log(f"downloading {model} version {version}'s adapter from {source} ...")
        storage.fetch(source, folder)
    return serve(relaunch, str(folder), tags.get("endpoint_name") or f"{slug(model)}-v{version}", log=log,
                 adapter_uri=source).endpoint
