"""``RelayServer``: fineflow's built-in OpenAI-compatible server (``relay_app.py``) for transformers causal LMs.

    server = RelayServer(name='tiny', prompt_style='alpaca')
    command = server.cmd('infra/models/tiny-llama')   # Command: the server argv; return_value is its URL
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from tasks import envs
from tasks.core import Command, check_kwargs
from tasks.deploy.base import DeployParams, LazyLLMDeployBase, http_ready, openai_text, response_json


class RelayParams(DeployParams):
    max_tokens: int = Field(512, ge=1, le=8192)  # the largest max_tokens a request may ask for
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_batch: int = Field(16, ge=1, le=256)  # requests decoded together
    batch_wait_ms: float = Field(5, ge=0, le=1000)  # how long the first request of a batch waits for others
    # torch's threads for decoding. 1: a small model's steps are too short to share, and more threads spin
    # against the event loop that streams the answers.
    threads: int = Field(1, ge=1, le=256)


class RelayServer(LazyLLMDeployBase):
    engine: ClassVar[str] = "relay"
    Params: ClassVar[type[DeployParams]] = RelayParams
    api_key_env: ClassVar[str | None] = "FINEFLOW_API_KEY"
    allowed = ("host", "port", "name", "prompt_style", *RelayParams.model_fields)

    def __init__(self, launcher: Any = None, **kw):
        check_kwargs(type(self).__name__, kw, self.allowed)
        super().__init__(launcher=launcher)
        self.params = RelayParams(**{k: v for k, v in kw.items() if k in RelayParams.model_fields})
        self.kw = {"host": "127.0.0.1", "port": None, "name": "fineflow-model", "prompt_style": "alpaca", **kw}

    def url(self) -> str:
        return f"http://{self.kw['host']}:{self.kw['port']}"

    def cmd(self, model_path: str) -> Command:
        if not self.kw["port"]:
            from tasks.deploy.endpoints import free_port

            self.kw["port"] = free_port()
        p = self.params
        argv = [envs.bin_path(self.environment, "python"), "-m", "tasks.deploy.relay_app", "--model", model_path,
                "--host", self.kw["host"], "--port", str(self.kw["port"]), "--name", self.kw["name"],
                "--prompt-style", self.kw["prompt_style"], "--max-tokens", str(p.max_tokens),
                "--max-body-bytes", str(p.max_body_bytes), "--max-batch", str(p.max_batch),
                "--batch-wait-ms", str(p.batch_wait_ms), "--threads", str(p.threads)]
        return Command(argv, return_value=self.url(), checker=http_ready(f"{self.url()}/health"),
                       env=envs.path_env(self.environment), ready_timeout_s=p.ready_timeout_s)

    def smoke_request(self, prompt: str, model_path: str | None = None) -> tuple[str, dict[str, Any]]:
        return "/v1/completions", {"prompt": prompt, "max_tokens": 16}

    @staticmethod
    def extract_result(output, inputs):
        """``output`` is the HTTP response of ``/v1/completions`` or ``/v1/chat/completions``."""
        return openai_text(response_json(output))
