"""The serving platform interface and the deploy section that chooses one (``serving:``); see ``__init__``."""

from __future__ import annotations

import json
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.core import Command
from tasks.deploy.base import LazyLLMDeployBase
from tasks.servers.shadow import read_pairs
from tasks.serving.endpoints import Endpoint
from tasks.settings import env, state_dir

Log = Callable[[str], None]


class ServingSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    platform: Literal["local", "ray"] = "local"
    # ray: the head's host:port (GCS: this machine runs a Ray node of the cluster), ray://host:port (Ray's client,
    # from any machine: a Kubernetes Job's pod), or "stack" (the local stack's cluster)
    address: str | None = None
    # ray: where Serve's proxy listens, host:port (default: the head's host, FINEFLOW_SERVE_PORT)
    http: str | None = None
    replicas: int = Field(1, ge=1, le=1000)  # ray: engine servers per version, at most one per node
    autoscaling: dict[str, Any] | None = None  # ray: Serve's autoscaling_config (min_replicas, max_replicas, ...)

    @classmethod
    def from_setting(cls) -> "ServingSection":
        """``FINEFLOW_SERVING``: ``local``, ``ray`` (the local stack's cluster), ``ray://HEAD:PORT`` (the head's
        GCS port) or ``ray-client://HEAD:PORT`` (the head's Ray client server)."""
        value = env("FINEFLOW_SERVING")
        if value == "local":
            return cls()
        if value == "ray":
            return cls(platform="ray", address="stack")
        if value.startswith("ray://"):
            return cls(platform="ray", address=value[len("ray://"):])
        if value.startswith("ray-client://"):
            return cls(platform="ray", address="ray://" + value[len("ray-client://"):])
        raise ValueError(f"FINEFLOW_SERVING={value!r}: expected local, ray, ray://HEAD:PORT or ray-client://HEAD:PORT")

    @model_validator(mode="after")
    def cluster_answers(self) -> "ServingSection":
        if self.platform == "local":
            if self.address or self.http or self.autoscaling or self.replicas != 1:
                raise ValueError("serving: address, http, replicas and autoscaling are for platform: ray")
            if env("FINEFLOW_EPHEMERAL") == "1":
                raise ValueError("serving.platform local: this flow runs where nothing outlives it (FINEFLOW_EPHEMERAL"
                                 "=1: a Kubernetes Job's pod), so an endpoint started here would stop with the run; "
                                 "serve through the Ray platform's client: serving: {platform: ray, address: "
                                 "ray://HEAD:10001} in the deploy section, or FINEFLOW_SERVING=ray-client://HEAD:10001 "
                                 "in the pool's env")
            return self
        if self.address in (None, "stack"):
            self.address, stack_http = local_cluster()
            self.http = self.http or stack_http
        if self.autoscaling and self.replicas != 1:
            raise ValueError("serving: give replicas or autoscaling, not both")
        host, port = head_host_port(self.address)
        if not host or not port.isdigit():
            raise ValueError(f"serving.address {self.address!r}: expected HOST:PORT of the Ray head (or "
                             "ray://HOST:PORT, its client server)")
        if silent := head_silent(self.address):
            raise ValueError(f"serving.address {self.address}: {silent}; start the cluster (`make up` with "
                             "FINEFLOW_SERVING=ray starts one here) or fix the address")
        if not self.address.startswith("ray://") and not ray_node_here():
            raise ValueError(f"serving.address {self.address} is a Ray head's GCS port, which a Ray driver uses only "
                             f"on a node of the cluster, and this machine runs no Ray node: give the head's client "
                             f"server, ray://{host}:10001 at Ray's default client port (FINEFLOW_SERVING="
                             f"ray-client://{host}:10001)")
        self.http = self.http or f"{host}:{env('FINEFLOW_SERVE_PORT')}"
        return self


def head_silent(address: str, timeout_s: float = 5) -> str | None:
    """Why the Ray head at ``host:port`` takes no connection, or None when it does. A Ray driver started against a
    dead head waits minutes before it gives up; this answers in seconds."""
    host, port = head_host_port(address)
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        return f"the Ray head does not answer ({e})"
    return None


def ray_node_here(proc: str = "/proc") -> bool:
    """Whether a Ray node (its raylet) runs on this machine, as a Ray driver given a GCS address looks for one."""
    for cmdline in Path(proc).glob("[0-9]*/cmdline"):
        try:
            program = cmdline.read_bytes().split(b"\0", 1)[0]
        except OSError:  # gone, or not ours to read
            continue
        if program.endswith(b"/raylet"):
            return True
    return False


def head_host_port(address: str) -> tuple[str, str]:
    """``host:port`` or Ray's client notation ``ray://host:port``: (host, port)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host, port


def local_cluster() -> tuple[str, str]:
    """The Ray head the local stack started (``make up`` with ``FINEFLOW_SERVING=ray``) and its Serve proxy."""
    path = state_dir() / "stack.json"
    stack = json.loads(path.read_text()) if path.exists() else {}
    if not stack.get("ray_address"):
        raise ValueError(f"serving.platform ray without an address, and the local stack ({path}) runs no Ray "
                         "cluster: `FINEFLOW_SERVING=ray make up` starts one, or give serving.address")
    return stack["ray_address"], f"127.0.0.1:{stack['ports']['serve']}"


class ServingPlatform(ABC):
    """What a serving platform does. ``switch`` moves new requests at once; ``retire`` lets the requests in
    flight on the replaced version finish before it stops."""

    name: ClassVar[str] = ""  # the row in PLATFORMS
    # Its nodes fetch a version's files from the bucket (``model_uri``) where they lack them: what it serves must
    # be there, a shared base model too.
    fetches_models: ClassVar[bool] = False
    # Versions may be started at the same time from one process (``rollout.restore``): False where each start is
    # a change to one shared deployment that the platform applies one at a time anyway.
    concurrent_starts: ClassVar[bool] = False

    def __init__(self, section: ServingSection):
        self.section = section

    @abstractmethod
    def start(self, name: str, command: Command, engine: LazyLLMDeployBase, model_path: str, model_uri: str,
              api_key: bool, relaunch: dict | None) -> Endpoint:
        """Serve ``command`` (the engine's) as version endpoint ``name``; return once it answers its health check."""

    @abstractmethod
    def get(self, name: str) -> Endpoint | None:
        """The running endpoint ``name``, or None."""

    @abstractmethod
    def stop(self, name: str) -> bool:
        """Stop endpoint ``name``; False when nothing of that name runs."""

    @abstractmethod
    def route(self, model: str, alias: str, ep: Endpoint) -> str:
        """The stable URL of ``model@alias`` (made ready to be switched, where the platform needs that)."""

    @abstractmethod
    def switch(self, model: str, alias: str, ep: Endpoint, version: str) -> str | None:
        """Send new requests to ``model@alias`` to ``ep``; returns what was served before (for ``retire``)."""

    @abstractmethod
    def retire(self, model: str, alias: str, old_name: str, old_target: str | None, log: Log) -> bool:
        """Stop the replaced endpoint ``old_name`` once its requests in flight are done."""

    @abstractmethod
    def route_status(self, model: str, alias: str) -> str:
        """One line for people: the route's URL, whether it answers, where it points."""

    # A shadow canary (``tasks.serving.canary``): the route copies a share of its live requests to a candidate.
    mirrors: ClassVar[bool] = False
    # ``deploy.traffic`` (``tasks.servers.traffic``): the route records requests and answers and takes feedback.
    records: ClassVar[bool] = False

    def mirror(self, model: str, alias: str, candidate: Endpoint, shadow: dict[str, Any] | None) -> None:
        """Copy ``shadow["share"]`` of ``model@alias``'s live requests to ``candidate`` once production answered,
        each pair appended to the file ``shadow["pairs"]`` (at most ``shadow["max_pairs"]``,
        ``tasks.servers.shadow``); None: stop."""
        raise NotImplementedError(f"the {self.name} serving platform has no shadow canary (promotion.canary)")

    def mirrored(self, model: str, alias: str, pairs: str) -> list[dict[str, Any]]:
        """The pairs ``model@alias``'s mirror kept so far, as the file ``pairs`` on this machine holds them."""
        return read_pairs(Path(pairs))

    # LoRA adapters served on a shared base endpoint (``deploy.serve: adapter``, ``tasks.serving.adapters``).

    @abstractmethod
    def adapter_root(self) -> str:
        """The folder a base endpoint's engine reads adapters from, as its command line names it."""

    def adapter_state(self, base_name: str) -> str:
        """A file the base endpoint ``base_name`` keeps its adapters in, so that its supervisor's restart brings
        them back; "" where the platform brings them back itself (Ray loads an adapter where it is asked for)."""
        return ""

    @abstractmethod
    def load_adapter(self, base: Endpoint, name: str, adapter_dir: str, adapter_uri: str,
                     relaunch: dict | None) -> Endpoint:
        """Serve the adapter in ``adapter_dir`` (the same files as ``adapter_uri`` in the bucket, where a platform's
        nodes fetch them) on ``base`` as model ``name``: its endpoint, whose requests name ``name``."""

    @abstractmethod
    def unload_adapter(self, name: str) -> bool:
        """Unload adapter ``name`` from its base; False when the platform has nothing to unload now."""
