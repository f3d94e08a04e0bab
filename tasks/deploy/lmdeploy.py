"""``LMDeploy``: ``lmdeploy serve api_server`` (TurboMind), for CUDA GPUs only.

    engine = LMDeploy(**{"server-port": 23333, "tp": 2})
    command = engine.cmd("runs/merged")   # lmdeploy serve api_server runs/merged --model-name ... --tp 2 ...

LMDeploy has no CPU path: ``preflight()`` says at once what is missing (the ``lmdeploy`` program, a CUDA
device). Its API keys are given on the command line only (``--api-keys``), where people and ``ps`` see them,
so fineflow starts it without one, on 127.0.0.1: a pipeline that keeps the key on (the default) refuses it.
"""

from __future__ import annotations

import shutil
from typing import Any, ClassVar

from pydantic import ConfigDict, Field

from tasks.core import Command, check_kwargs
from tasks.deploy.base import (DeployParams, LazyLLMDeployBase, accelerators, model_to_serve, openai_text, require,
                               response_json)
from tasks.settings import env


class LMDeployParams(DeployParams):
    """The contract's keywords (dashed as LMDeploy spells them; underscores work too) and defaults."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    ready_timeout_s: float = 600  # TurboMind converts the weights on first start
    tp: int = Field(1, ge=1)
    max_batch_size: int = Field(128, ge=1, alias="max-batch-size")
    chat_template: str | None = Field(None, alias="chat-template")  # a chat template JSON file for LMDeploy
    eager_mode: bool = Field(default_factory=lambda: env("LMDEPLOY_EAGER_MODE").lower() in ("1", "true", "on"),
                             alias="eager-mode")


class LMDeploy(LazyLLMDeployBase):
    engine: ClassVar[str] = "lmdeploy"
    Params: ClassVar[type[DeployParams]] = LMDeployParams
    auto_types: ClassVar[tuple[str, ...]] = ("llm", "vlm")
    auto_rank: ClassVar[int] = 30
    gpu_key: ClassVar[str | None] = "tp"

    def __init__(self, launcher: Any = None, trust_remote_code: bool = True, log_path: str | None = None, **kw):
        names = {f.alias or n for n, f in LMDeployParams.model_fields.items()} | set(LMDeployParams.model_fields)
        check_kwargs(type(self).__name__, kw, ("server-name", "server-port", "host", "port", "name", "prompt_style",
                                               *names))
        super().__init__(launcher=launcher, host=kw.get("server-name") or kw.get("host"),
                         port=kw.get("server-port") or kw.get("port"), name=kw.get("name"),
                         prompt_style=kw.get("prompt_style"))
        self.params = LMDeployParams(**{k: v for k, v in kw.items() if k in names})
        self.trust_remote_code, self.log_path = trust_remote_code, log_path

    def preflight(self) -> None:
        import torch

        missing = [] if shutil.which("lmdeploy") else ["the `lmdeploy` program (pip install lmdeploy, with CUDA)"]
        if not torch.cuda.is_available():
            missing.append("a CUDA GPU (TurboMind and LMDeploy's PyTorch engine have no CPU path)")
        require("LMDeploy", missing, accelerators())

    def cmd(self, finetuned_model: str | None = None, base_model: str | None = None,
            master_ip: str | None = None) -> Command:
        self.single_node(master_ip)
        model = model_to_serve("LMDeploy", finetuned_model, base_model)
        p = self.params
        argv = ["lmdeploy", "serve", "api_server", str(model), "--model-name", self.name, "--server-name", self.host,
                "--server-port", str(self.listen_port()), "--tp", str(p.tp), "--max-batch-size", str(p.max_batch_size)]
        if p.chat_template:
            argv += ["--chat-template", p.chat_template]
        if p.eager_mode:
            argv.append("--eager-mode")
        return self.server_command(argv)

    def geturl(self, job: Any = None) -> str:
        return f"{self.url()}/v1/chat/interactive"

    def smoke_request(self, prompt: str, model_path: str | None = None) -> tuple[str, dict[str, Any]]:
        return "/v1/completions", {"model": self.name, "prompt": prompt, "max_tokens": 16, "temperature": 0}

    @staticmethod
    def extract_result(x, inputs):
        """The text of ``/v1/chat/interactive`` (``text``) or of the OpenAI routes."""
        data = response_json(x)
        return openai_text(data) if "choices" in data else data["text"]
