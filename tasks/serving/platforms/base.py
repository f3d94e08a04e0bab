"""The serving platform interface and the deploy section that chooses one (``serving:``); see ``__init__``."""

from __future__ import annotations

import json
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.core import Command
from tasks.deploy.base import LazyLLMDeployBase
from tasks.serving.endpoints import Endpoint
from tasks.settings import env, state_dir

Log = Callable[[str], None]


class ServingSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    platform: Literal["local", "ray"] = "local"
    address: str | None = None  # ray: the head's host:port ("stack": the local stack's cluster)
    # ray: where Serve's proxy listens, host:port (default: the head's host, FINEFLOW_SERVE_PORT)
    http: str | None = None
    replicas: int = Field(1, ge=1, le=1000)  # ray: engine servers per version, at most one per node
    autoscaling: dict[str, Any] | None = None  # ray: Serve's autoscaling_config (min_replicas, max_replicas, ...)

    @classmethod
    def from_setting(cls) -> "ServingSection":
        """``FINEFLOW_SERVING``: ``local``, ``ray`` (the local stack's cluster) or ``ray://HEAD:PORT``."""
        value = env("FINEFLOW_SERVING")
        if value == "local":
            return cls()
        if value == "ray" or value.startswith("ray://"):
            return cls(platform="ray", address=value[len("ray://"):] if "://" in value else "stack")
        raise ValueError(f"FINEFLOW_SERVING={value!r}: expected local, ray or ray://HEAD:PORT")

    @model_validator(mode="after")
    def cluster_answers(self) -> "ServingSection":
        if self.platform == "local":
            if self.address or self.http or self.autoscaling or self.replicas != 1:
                raise ValueError("serving: address, http, replicas and autoscaling are for platform: ray")
            return self
        if self.address in (None, "stack"):
            self.address, stack_http = local_cluster()
            self.http = self.http or stack_http
        if self.autoscaling and self.replicas != 1:
            raise ValueError("serving: give replicas or autoscaling, not both")
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"serving.address {self.address!r}: expected HOST:PORT of the Ray head")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as e:
            raise ValueError(f"serving.address {self.address}: the Ray head does not answer ({e}); start the "
                             "cluster (`make up` with FINEFLOW_SERVING=ray starts one here) or fix the address") from e
        self.http = self.http or f"{host}:{env('FINEFLOW_SERVE_PORT')}"
        return self


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
