"""Deploy component bases and the built-in relay backend."""

from __future__ import annotations

import sys
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
