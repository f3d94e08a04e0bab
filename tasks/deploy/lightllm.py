"""``Lightllm``: ``python -m lightllm.server.api_server``, for CUDA GPUs only.

    engine = Lightllm(port=8080, tp=2)
    command = engine.cmd("runs/merged")   # python -m lightllm.server.api_server --model_dir runs/merged --tp=2 ...

LightLLM has no CPU path and no API key: ``preflight()`` says at once what is missing (the ``lightllm`` package,
a CUDA device), and a pipeline that keeps the key on (the default) refuses it.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any, ClassVar, Literal

from pydantic import Field

from tasks import net
from tasks.core import Command, check_kwargs
from tasks.deploy.base import (DeployParams, GenerateRoute, LazyLLMDeployBase, accelerators, model_to_serve, require,
                               response_json)


class LightllmParams(DeployParams):
    """The contract's keywords and defaults (``port`` and ``nccl_port`` None: free ones)."""

    ready_timeout_s: float = 600
    tp: int = Field(1, ge=1)
    max_total_token_num: int = Field(64000, ge=1)
    eos_id: int = 2
    nccl_port: int | None = None
    tokenizer_mode: str = "auto"
    running_max_req_size: int = Field(256, ge=1)
    data_type: Literal["float16", "bfloat16", "float32"] = "float16"
    max_req_total_len: int = Field(64000, ge=1)
    max_req_input_len: int = Field(4096, ge=1)
    long_truncation_mode: Literal["head", "center", None] = "head"


FLAGS = ("tp", "max_total_token_num", "eos_id", "port", "host", "nccl_port", "tokenizer_mode", "running_max_req_size",
         "data_type", "max_req_total_len", "max_req_input_len", "long_truncation_mode")


class Lightllm(GenerateRoute, LazyLLMDeployBase):
    engine: ClassVar[str] = "lightllm"
    Params: ClassVar[type[DeployParams]] = LightllmParams
    auto_types: ClassVar[tuple[str, ...]] = ("llm",)
    auto_rank: ClassVar[int] = 20
    gpu_key: ClassVar[str | None] = "tp"

    def __init__(self, trust_remote_code: bool = True, launcher: Any = None, log_path: str | None = None, **kw):
        check_kwargs(type(self).__name__, kw, ("host", "port", "name", "prompt_style", *LightllmParams.model_fields))
        super().__init__(launcher=launcher, host=kw.get("host"), port=kw.get("port"), name=kw.get("name"),
                         prompt_style=kw.get("prompt_style"))
        self.params = LightllmParams(**{k: v for k, v in kw.items() if k in LightllmParams.model_fields})
        self.trust_remote_code, self.log_path = trust_remote_code, log_path

    def preflight(self) -> None:
        import torch

        missing = [] if importlib.util.find_spec("lightllm") else ["the `lightllm` package (installed from its repo)"]
        if not torch.cuda.is_available():
            missing.append("a CUDA GPU (LightLLM's kernels are Triton/CUDA only)")
        require("LightLLM", missing, accelerators())

    def cmd(self, finetuned_model: str | None = None, base_model: str | None = None,
            master_ip: str | None = None) -> Command:
        self.single_node(master_ip)
        model = model_to_serve("LightLLM", finetuned_model, base_model)
        values = {**self.params.model_dump(), "port": self.listen_port(), "host": self.host,
                  "nccl_port": self.params.nccl_port or net.free_port()}
        argv = [sys.executable, "-m", "lightllm.server.api_server", "--model_dir", str(model)]
        argv += [f"--{k}={values[k]}" for k in FLAGS if values[k] is not None]
        if self.trust_remote_code:
            argv.append("--trust_remote_code")
        return self.server_command(argv)

    @staticmethod
    def extract_result(x, inputs):
        data = response_json(x)
        return data["generated_text"][0]
