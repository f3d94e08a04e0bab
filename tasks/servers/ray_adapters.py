"""LoRA adapters on a Ray Serve base version (``deploy.serve: adapter`` on the Ray platform), by Serve's model
multiplexing.

A request for an adapter carries Serve's multiplexed model id, ``NAME=URI`` (the model name the adapter answers
to, and its files in the bucket): the HTTP header ``serve-multiplexed-model-id`` on the base's own route, or the
id an alias route sets on its handle. Serve sends it to a replica that has the adapter, or to one that loads it:
the replica fetches the files onto its node (``$FINEFLOW_HOME/adapters/ray/``, the engine's adapter root), loads
them into its engine server through the runtime LoRA route, and sets ``model`` in the request's body to the
adapter's name. Each replica keeps the adapters it was asked for, unloading the least recently used past
``KNOWN_PER_REPLICA``; its engine keeps at most ``max_adapters`` of them in memory. A replica that Serve starts
again (its engine died) loads its adapters again as they are asked for: nothing is loaded by hand on any node.
"""

from __future__ import annotations

import json
import urllib.request

MODEL_ID_HEADER = "serve-multiplexed-model-id"  # Serve's proxy reads it (hyphens: proxies drop underscores)
ROOT_PLACEHOLDER = "{adapter_root}"  # in a base's argv: the replica's own adapter folder on its node
KNOWN_PER_REPLICA = 64  # adapters a replica keeps loaded in its engine (the engine's max_adapters bound memory)


def model_id(name: str, uri: str) -> str:
    """The multiplexed model id of adapter ``name`` whose files are at ``uri``."""
    if "=" in name or not uri:
        raise ValueError(f"adapter {name!r} at {uri!r}: a name without '=' and its files' URI are needed")
    return f"{name}={uri}"


def split_model_id(value: str) -> tuple[str, str]:
    name, sep, uri = value.partition("=")
    if not (name and sep and uri):
        raise ValueError(f"multiplexed model id {value!r}: expected NAME=URI of a LoRA adapter")
    return name, uri


class AdapterRefused(Exception):
    """The engine server would not load the adapter: its status and answer, passed on to the caller."""

    def __init__(self, status: int, body: bytes):
        super().__init__(body.decode(errors="replace")[:500])
        self.status, self.body = status, body


class LoadedAdapter:
    """An adapter loaded in a replica's engine server; unloaded there when Serve lets it go (``__del__``)."""

    def __init__(self, name: str, engine_url: str, headers: dict[str, str]):
        self.name, self.engine_url, self.headers, self.loaded = name, engine_url, headers, True

    def __del__(self):
        if not getattr(self, "loaded", False):
            return
        self.loaded = False
        request = urllib.request.Request(f"{self.engine_url}/v1/unload_lora_adapter", method="POST",
                                         data=json.dumps({"lora_name": self.name}).encode(),
                                         headers={**self.headers, "Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=30).close()
        except OSError:  # the engine is gone, and the adapter with it
            pass


async def load(session, engine_url: str, headers: dict[str, str], name: str, path: str) -> LoadedAdapter:
    """Load the adapter folder ``path`` (on this node) into the engine server at ``engine_url`` as ``name``."""
    async with session.post(f"{engine_url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path},
                            headers=headers) as reply:
        if reply.status != 200:
            raise AdapterRefused(reply.status, await reply.read())
    return LoadedAdapter(name, engine_url, headers)
