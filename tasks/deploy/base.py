"""Deploy component bases and the built-in relay backend."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from typing import Any

from tasks import launchers
from tasks.core import ComponentBase, Command, check_kwargs


class LazyLLMDeployBase(ComponentBase):
    """A serving backend: ``cmd(model_path)`` builds the launch command; the call returns the URL."""

    def __init__(self, *, launcher: Any = None):
        super().__init__(launcher=launcher or launchers.remote())

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


class RelayServer(LazyLLMDeployBase):
    """fineflow's built-in OpenAI-compatible server (``tasks.deploy.relay_app``) for transformers models."""

    allowed = ("host", "port", "name", "prompt_template")

    def __init__(self, launcher: Any = None, **kw):
        check_kwargs(type(self).__name__, kw, self.allowed)
        super().__init__(launcher=launcher)
        self.kw = {"host": "127.0.0.1", "port": None, "name": "fineflow-model", "prompt_template": "alpaca", **kw}

    def url(self) -> str:
        return f"http://{self.kw['host']}:{self.kw['port']}"

    def cmd(self, model_path: str) -> Command:
        if not self.kw["port"]:
            from tasks.deploy.endpoints import free_port

            self.kw["port"] = free_port()
        argv = [sys.executable, "-m", "tasks.deploy.relay_app", "--model", model_path, "--host", self.kw["host"],
                "--port", str(self.kw["port"]), "--name", self.kw["name"],
                "--prompt-template", self.kw["prompt_template"]]
        return Command(argv, return_value=self.url())

    @staticmethod
    def extract_result(output, inputs):
        """``output`` is the HTTP response of ``/v1/completions`` or ``/v1/chat/completions``."""
        choice = output.json()["choices"][0]
        return choice["message"]["content"] if "message" in choice else choice["text"]
