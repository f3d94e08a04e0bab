"""``RelayServer``: the built-in OpenAI-compatible server (``tasks/servers/relay.py``) for transformers causal LMs.

    server = RelayServer(name='tiny', prompt_style='alpaca')
    command = server.cmd('infra/models/tiny-llama')   # Command: the server argv; return_value is its URL
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from tasks import envs
from tasks.core import Command, check_kwargs
from tasks.deploy.base import (DeployParams, LazyLLMDeployBase, accelerators, model_to_serve, openai_text, require,
                               response_json)
from tasks.launchers import cuda_available


ADAPTER_BATCH_WAIT_MS = 50.0  # a shared base's default batch wait (deploy.serve: adapter), unless the config sets one


class RelayParams(DeployParams):
    max_tokens: int = Field(512, ge=1, le=8192)  # the largest max_tokens a request may ask for
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_batch: int = Field(16, ge=1, le=256)  # requests decoded together
    batch_wait_ms: float = Field(5, ge=0, le=1000)  # how long the first request of a batch waits for others
    # torch's threads for decoding. 1: a small model's steps are too short to share, and more threads spin
    # against the event loop that streams the answers.
    threads: int = Field(1, ge=1, le=256)
    # Where the model decodes: the first CUDA GPU when there is one (auto), or as named. float32 either way.
    device: Literal["auto", "cpu", "cuda"] = "auto"


class RelayServer(LazyLLMDeployBase):
    engine: ClassVar[str] = "relay"
    Params: ClassVar[type[DeployParams]] = RelayParams
    api_key_env: ClassVar[str | None] = "FINEFLOW_API_KEY"
    auto_types: ClassVar[tuple[str, ...]] = ("llm",)
    auto_rank: ClassVar[int] = 90  # always installed: the LLM engine of last resort
    serves_adapters: ClassVar[bool] = True
    allowed = ("host", "port", "name", "prompt_style", *RelayParams.model_fields)

    def __init__(self, launcher: Any = None, **kw):
        check_kwargs(type(self).__name__, kw, self.allowed)
        super().__init__(launcher=launcher, host=kw.get("host"), port=kw.get("port"), name=kw.get("name"),
                         prompt_style=kw.get("prompt_style", "alpaca"))
        self.params = RelayParams(**{k: v for k, v in kw.items() if k in RelayParams.model_fields})
        self.adapters: list[str] = []  # the server's adapter flags (with_adapters)

    def with_adapters(self, max_adapters: int, base_revision: str, root: str, state: str = "") -> None:
        self.adapters = ["--max-adapters", str(max_adapters), "--base-revision", base_revision, "--adapter-root", root,
                         *(["--adapter-state", state] if state else [])]

    @classmethod
    def shared_base_params(cls, params: DeployParams) -> DeployParams:
        # Requests for different adapters arrive apart, and a decoding batch takes no new rows: a longer wait
        # gathers them into one batch (bench/multi_lora.py measures it).
        if "batch_wait_ms" in params.model_fields_set:
            return params
        return params.model_copy(update={"batch_wait_ms": ADAPTER_BATCH_WAIT_MS})

    @classmethod
    def auto_params(cls, ngpus: int, trust_remote_code: bool = True, log_path: str | None = None) -> dict[str, Any]:
        return {}  # it runs any transformers causal LM in this environment, on one device

    def cmd(self, finetuned_model: str | None = None, base_model: str | None = None,
            master_ip: str | None = None) -> Command:
        self.single_node(master_ip)
        # With a base model, the finetuned one only when it holds weights; alone, the model as given (a plan names
        # a folder that training will fill; the server refuses one without a model when it starts).
        model = model_to_serve("RelayServer", finetuned_model, base_model) if base_model else finetuned_model
        if not model:
            raise ValueError("RelayServer.cmd needs a model to serve")
        p = self.params
        argv = [envs.bin_path(self.environment, "python"), "-m", "tasks.servers.relay", "--model", model,
                "--host", self.host, "--port", str(self.listen_port()), "--name", self.name,
                "--prompt-style", self.prompt_style, "--max-tokens", str(p.max_tokens),
                "--max-body-bytes", str(p.max_body_bytes), "--max-batch", str(p.max_batch),
                "--batch-wait-ms", str(p.batch_wait_ms), "--threads", str(p.threads), "--device", p.device,
                *self.adapters]
        return self.server_command(argv)

    def preflight(self) -> None:
        """Refuse at once a GPU asked for where there is none."""
        if self.params.device == "cuda" and not cuda_available():
            require("RelayServer", ["a CUDA GPU (device: cuda; use device: cpu or auto on this machine)"],
                    accelerators())

    def smoke_request(self, prompt: str, model_path: str | None = None) -> tuple[str, dict[str, Any]]:
        return "/v1/completions", {"model": self.name, "prompt": prompt, "max_tokens": 16}

    @staticmethod
    def extract_result(output, inputs):
        """``output`` is the HTTP response of ``/v1/completions`` or ``/v1/chat/completions``."""
        return openai_text(response_json(output))
