"""The deploy engine interface, behind the contract's ``LazyLLMDeployBase``, and ``DummyDeploy``.

A serving engine is one module under ``tasks/deploy/`` with one class that declares:

- ``engine`` (its name in the table in ``tasks/deploy/__init__.py`` and in pipeline configs) and
  ``Params`` (its typed parameters);
- ``environment``: the ``infra/envs/<name>.txt`` it runs in (None: this interpreter);
- ``cmd(model_path)``: a ``Command`` whose last argv is the server (earlier argvs run first, to the
  end), with its ``env``, its URL as ``return_value`` and its readiness probe as ``checker``
  (``http_ready``, waited for up to ``ready_timeout_s``);
- ``smoke_request(prompt)``: the request that proves it answers, for its model type;
- ``extract_result(output, inputs)``: the answer in a raw response.
"""

from __future__ import annotations

import copy
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from tasks import envs, launchers
from tasks.core import ComponentBase, check_kwargs


class DeployParams(BaseModel):
    """An engine's typed parameters (the pipeline's ``deploy.params``)."""

    model_config = ConfigDict(extra="forbid")
    ready_timeout_s: float = 120  # how long the readiness probe may take to answer


def http_ready(url: str, timeout_s: float = 3) -> Callable[[], bool]:
    """A readiness probe: ``url`` answers 200 within ``timeout_s``."""
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                return resp.status == 200
        except Exception:
            return False
    return check


class LazyLLMDeployBase(ComponentBase):
    """A serving backend: ``cmd(model_path)`` builds the launch command; the call returns the URL."""

    engine: ClassVar[str] = ""
    Params: ClassVar[type[DeployParams]] = DeployParams
    environment: ClassVar[str | None] = envs.MAIN

    def __init__(self, *, launcher: Any = None):
        super().__init__(launcher=launcher or launchers.remote())

    def smoke_request(self, prompt: str) -> tuple[str, dict[str, Any]]:
        """The path and JSON body of a request that shows the endpoint answers ``prompt``."""
        raise NotImplementedError

    @staticmethod
    def extract_result(output, inputs):
        """The final result from a raw model output; backends override this."""
        return output


class DummyDeploy(LazyLLMDeployBase):
    """A stand-in deployment for tests and examples: it answers a request in ``message_format`` with
    ``reply for <inputs>, and parameters is <parameters>``, whole or (``stream=True``) piece by piece."""

    keys_name_handle = {"inputs": "inputs"}
    message_format = {"inputs": "", "parameters": {"do_sample": False, "temperature": 0.1}}
    allowed = ("port",)

    def __init__(self, launcher: Any = None, *, stream: bool = False, **kw):
        check_kwargs(type(self).__name__, kw, self.allowed)
        super().__init__(launcher=launcher or launchers.remote(sync=False))
        self.stream = stream
        self.kw = kw

    def _request(self, x: Any) -> dict:
        request = copy.deepcopy(self.message_format)
        if isinstance(x, dict):
            request.update(x)
        else:
            request[self.keys_name_handle["inputs"]] = x
        return request

    def apply(self, x: Any) -> str | Iterator[str]:
        r = self._request(x)
        pieces = ["reply", " for", f" {r['inputs']}", ", and", " parameters", " is", f" {r['parameters']}"]
        return iter(pieces) if self.stream else "".join(pieces)
