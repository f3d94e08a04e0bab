"""LoRA adapters as endpoints: a version served as an adapter on a shared base endpoint (``deploy.serve: adapter``)
is an ``Endpoint`` with ``adapter`` set (the model name it answers to there), the base's URL and no process of its
own, recorded in ``$FINEFLOW_HOME/adapters/served/<name>.json`` while it is loaded.

Loading and unloading go through the base server's runtime LoRA routes (vLLM's ``/v1/load_lora_adapter`` and
``/v1/unload_lora_adapter``, which the built-in server answers too); the base keeps serving its other adapters
throughout. Adapter files are kept under ``root()``, the one folder the base servers read adapters from.
"""

from __future__ import annotations

from pathlib import Path

from tasks import files
from tasks.serving.endpoints import Endpoint, adapters_listed
from tasks.settings import state_dir

TIMEOUT_S = 120  # a load reads the adapter's weights between two batches


class AdapterRefused(RuntimeError):
    """The base endpoint would not load the adapter (its base revision, its files): the server's reason."""


def root(create: bool = True) -> Path:
    """Where adapter files are kept on this machine: the only folder a base endpoint loads adapters from."""
    path = state_dir() / "adapters"
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _record(name: str) -> Path:
    folder = root() / "served"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{name}.json"


def _reason(reply) -> str:
    try:
        error = reply.json().get("error", reply.json())
        return str(error.get("message", error)) if isinstance(error, dict) else str(error)
    except ValueError:
        return reply.text[:500]


def load(base: Endpoint, name: str, path: str, relaunch: dict | None) -> Endpoint:
    """Load the adapter folder ``path`` on the base endpoint ``base`` as ``name``; its endpoint, recorded. The
    server's refusal is raised as ``AdapterRefused`` with its reason (another base revision, files it cannot
    read), and nothing is recorded."""
    import httpx

    reply = httpx.post(f"{base.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path},
                       headers=base.headers(), timeout=TIMEOUT_S)
    if reply.status_code != 200:
        raise AdapterRefused(f"endpoint {base.name} at {base.url} refused adapter {name} ({path}): "
                             f"{_reason(reply)}")
    ep = Endpoint(name=name, url=base.url, pid=0, backend=base.backend, argv=base.argv, model_path=path,
                  log_path=base.log_path, started_at=base.started_at, api_key_file=base.api_key_file,
                  relaunch=relaunch, adapter=name, base=base.name)
    files.write_atomic(_record(name), ep.model_dump_json(indent=1))
    return ep


def get(name: str) -> Endpoint | None:
    """The adapter endpoint ``name`` when it is recorded and its base lists it; None otherwise."""
    path = _record(name)
    if not path.exists():
        return None
    ep = Endpoint.model_validate_json(path.read_text())
    return ep if name in adapters_listed(ep) else None


def unload(name: str) -> bool:
    """Unload adapter ``name`` from its base endpoint and forget it; False when none of that name is recorded, or
    when the base would not unload it (then it stays recorded, for a later stop to try again). A base that is gone
    has nothing to unload."""
    import httpx

    path = _record(name)
    if not path.exists():
        return False
    ep = Endpoint.model_validate_json(path.read_text())
    try:
        reply = httpx.post(f"{ep.url}/v1/unload_lora_adapter", json={"lora_name": name}, headers=ep.headers(),
                           timeout=TIMEOUT_S)
        if reply.status_code not in (200, 404):  # 404: not loaded there (the base started again without it)
            return False
    except httpx.TransportError:
        pass  # the base is gone, and the adapter with it
    path.unlink(missing_ok=True)
    return True
