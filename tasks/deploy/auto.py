"""``AutoDeploy``: choose the serving engine and its GPU count from the model and the machine.

    engine = AutoDeploy('internlm2-chat-7b', max_token_num=4096)
    engine               # <fineflow.llm.deploy type=Vllm>, or whichever rule below chose
    engine.auto_plan     # DeployPlan(engine='vllm', ngpus=1, reason='llm model: vllm, the first installed ...')

The rules, in one place (the README shows the same table):

- model type (``type=``, else ``ModelManager.get_model_type``) -> the engines that serve it, in order of
  preference, ``ENGINES_BY_TYPE``; the first *installed* one is chosen: its environment is built (or it runs in
  this one) and its ``preflight()`` passes on this machine. The built-in relay server is always installed, so an
  LLM always gets an engine.
- model size (billions of parameters, as AutoFinetune reads it) and ``max_token_num`` -> the memory the
  weights (fp16) and one sequence's KV cache need; with the GPU memory (``LAZYLLM_GPU_MEMORY``, GB, default 80)
  -> the GPU count, a power of two (tensor parallelism splits heads evenly that way). It becomes the engine's
  ``tensor-parallel-size`` / ``tp`` / ``worldSize``.
- speech models go by name: TTS as ``TTSDeploy.get_deploy_cls`` picks (piper voices, Bark, MusicGen), STT to
  SenseVoice for a SenseVoice model and to Whisper otherwise; OCR to ``ocr``, images to ``stable_diffusion``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from tasks import envs
from tasks.deploy.base import DeployParams, EngineUnavailableError, LazyLLMDeployBase
from tasks.finetune.auto import BYTES_PER_PARAM, RESERVED, model_size_b

ENGINES_BY_TYPE: dict[str, tuple[str, ...]] = {
    "llm": ("vllm", "lightllm", "lmdeploy", "mindie", "relay"),
    "vlm": ("lmdeploy",),
    "ocr": ("ocr",),
    "sd": ("stable_diffusion",),
}
# How each engine is told the GPU count.
PARALLEL_KEY = {"vllm": "tensor-parallel-size", "lightllm": "tp", "lmdeploy": "tp", "mindie": "worldSize"}
KV_GB_PER_B_PER_1K_TOKENS = 0.05  # one sequence's KV cache, per billion parameters and 1k tokens (fp16)


class AutoDeployParams(DeployParams):
    ready_timeout_s: float | None = None  # None: the chosen engine's own default
    max_token_num: int = Field(1024, ge=1)
    type: str | None = None  # the model type; None: from the model's name


@dataclass
class DeployPlan:
    engine: str
    model_type: str
    model_size_b: float
    ngpus: int
    reason: str


def gpus_needed(size_b: float, max_token_num: int, gpu_memory_gb: float) -> int:
    need = size_b * BYTES_PER_PARAM + KV_GB_PER_B_PER_1K_TOKENS * size_b * max_token_num / 1024
    n = max(1, math.ceil(need / (gpu_memory_gb * (1 - RESERVED))))
    return 2 ** math.ceil(math.log2(n))


def installed(name: str) -> tuple[bool, str]:
    """Whether engine ``name`` can start here, and if not, why."""
    from tasks.deploy import ENGINES

    cls = ENGINES[name]
    if cls.environment is not envs.MAIN and not envs.is_built(cls.environment):
        return False, f"environment {cls.environment} not built (python -m tasks.envs build {cls.environment})"
    try:
        cls().preflight()
    except EngineUnavailableError as e:
        return False, str(e)
    return True, ""


def by_name(model_type: str, model: str) -> str | None:
    """Speech engines go by the model's name, not the machine: a Bark model is served by Bark or not at all."""
    if model_type == "tts":
        from tasks.deploy.tts import TTSDeploy

        return TTSDeploy.get_deploy_cls(model).engine
    if model_type == "stt":
        return "sensevoice" if "sensevoice" in Path(model).name.lower() else "whisper"
    return None


def choose(model_type: str, model: str = "") -> tuple[str, str]:
    if name := by_name(model_type, model):
        return name, f"{model_type} model {Path(model).name}: {name}, by its name"
    candidates = ENGINES_BY_TYPE.get(model_type)
    if not candidates:
        raise ValueError(f"AutoDeploy knows no engine for {model_type} models (it serves "
                         f"{', '.join([*ENGINES_BY_TYPE, 'tts', 'stt'])} models)")
    skipped = []
    for name in candidates:
        ok, why = installed(name)
        if ok:
            return name, (f"{model_type} model: {name}, the first installed of {', '.join(candidates)}"
                          + (f" ({'; '.join(skipped)})" if skipped else ""))
        skipped.append(f"{name}: {why}")
    raise EngineUnavailableError(f"no engine for {model_type} models can start here: {'; '.join(skipped)}")


class AutoDeploy(LazyLLMDeployBase):
    """Builds the chosen engine (``__new__`` returns it), with ``auto_plan`` telling why."""

    engine: ClassVar[str] = "auto"
    Params: ClassVar[type[DeployParams]] = AutoDeployParams

    @classmethod
    def get_deployer(cls, base_model: str, source: str | None = None, trust_remote_code: bool = True,
                     launcher: Any = None, type: str | None = None, log_path: str | None = None,
                     max_token_num: int = 1024, **kw) -> tuple[type[LazyLLMDeployBase], Any, dict[str, Any]]:
        """(engine class, launcher, keyword arguments) for ``base_model``; the plan is in the arguments'
        ``auto_plan``."""
        from tasks.deploy import ENGINES
        from tasks.models import ModelManager

        path = base_model if Path(base_model).is_dir() else \
            ModelManager(model_source=source).find_local(base_model) or base_model
        model_type = type or ModelManager.get_model_type(Path(base_model).name)
        name, reason = choose(model_type, base_model)
        size = model_size_b(path if Path(path).exists() else base_model)
        gpu_memory = float(os.environ.get("LAZYLLM_GPU_MEMORY", 80))
        ngpus = gpus_needed(size, max_token_num, gpu_memory) if name in PARALLEL_KEY else 0
        plan = DeployPlan(name, model_type, round(size, 4), ngpus,
                          f"{reason}; {size:.3g}B parameters, {max_token_num} tokens"
                          + (f", GPUs of {gpu_memory:g} GB -> {ngpus} GPU(s)" if ngpus else ", on the CPU"))
        kwargs = dict(kw)
        if name in PARALLEL_KEY:
            kwargs.setdefault(PARALLEL_KEY[name], ngpus)
        if name == "vllm":
            kwargs.setdefault("openai_api", True)  # OpenAI's API, and so an API key, as pipelines serve
        if name == "mindie":
            kwargs.setdefault("npuDeviceIds", [list(range(ngpus))])
        if name != "relay":
            kwargs.update(trust_remote_code=trust_remote_code, log_path=log_path)
        return ENGINES[name], launcher, {**kwargs, "auto_plan": plan}

    def __new__(cls, base_model: str, source: str | None = None, trust_remote_code: bool = True,
                launcher: Any = None, stream: bool = False, type: str | None = None, max_token_num: int = 1024,
                log_path: str | None = None, ready_timeout_s: float | None = None, **kw):
        if ready_timeout_s is not None:
            kw["ready_timeout_s"] = ready_timeout_s
        engine_cls, launcher, kwargs = cls.get_deployer(base_model, source, trust_remote_code, launcher, type,
                                                        log_path, max_token_num, **kw)
        plan = kwargs.pop("auto_plan")
        engine = engine_cls(launcher=launcher, **kwargs)
        engine.auto_plan = plan
        return engine

    @classmethod
    def supports_api_key(cls, params: DeployParams | None) -> bool:
        return True  # known once the engine is chosen: the deploy step refuses then

    @classmethod
    def for_pipeline(cls, model_path: str, **kw) -> LazyLLMDeployBase:
        return cls(model_path, **kw)
