"""``AutoDeploy``: choose the serving engine and its GPU count from the model and the machine.

    engine = AutoDeploy('internlm2-chat-7b', max_token_num=4096)
    engine               # <fineflow.llm.deploy type=Vllm>, or whichever rule below chose
    engine.auto_plan     # DeployPlan(engine='vllm', ngpus=1, reason='llm model: vllm, the first installed ...')

The rules, in one place; each engine declares its own facts (``tasks/deploy/base.py``), so a new engine joins them
by its module and its row in ``tasks/deploy/engines.py`` alone:

- model type (``type=``, else ``ModelManager.get_model_type``) -> the engines whose ``auto_types`` hold it, by
  ``auto_rank``, and of those, the first *installed* one: its environment is built (or it runs in this one) and
  its ``preflight()`` passes on this machine. The built-in relay server is always installed, so an LLM always
  gets an engine. Speech engines go by the model's name instead (``auto_by_name``; ``auto_accepts``, as the
  reference package picks): a Bark model is served by Bark or not at all, its environment built when it starts.
- model size (billions of parameters, ``tasks.models.size``) and ``max_token_num`` -> the memory the weights
  (fp16) and one sequence's KV cache need; with the GPU memory (``LAZYLLM_GPU_MEMORY``, GB, default 80) -> the GPU
  count, a power of two (tensor parallelism splits heads evenly that way), given to an engine that declares a
  ``gpu_key`` (``tensor-parallel-size``, ``tp``, ``worldSize``).
- the chosen engine's ``auto_params`` give its other keywords (vLLM: OpenAI's API; MindIE: its NPU ids).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from tasks import envs
from tasks.deploy.base import DeployParams, EngineUnavailableError, LazyLLMDeployBase
from tasks.deploy.engines import ENGINES
from tasks.models import ModelManager
from tasks.models.size import BYTES_PER_PARAM, RESERVED, gpu_memory, model_size_b

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


def installed(cls: type[LazyLLMDeployBase]) -> tuple[bool, str]:
    """Whether engine ``cls`` can start here, and if not, why."""
    if cls.environment is not envs.MAIN and not envs.is_built(cls.environment):
        return False, f"environment {cls.environment} not built (python -m tasks.envs build {cls.environment})"
    try:
        cls().preflight()
    except EngineUnavailableError as e:
        return False, str(e)
    return True, ""


def candidates(model_type: str) -> list[type[LazyLLMDeployBase]]:
    """The engines AutoDeploy may choose for ``model_type``, in order of preference."""
    return sorted((cls for cls in ENGINES.values() if model_type in cls.auto_types), key=lambda cls: cls.auto_rank)


def choose(model_type: str, model: str = "") -> tuple[type[LazyLLMDeployBase], str]:
    """The engine for a ``model_type`` model named ``model``, and why."""
    ranked = candidates(model_type)
    if not ranked:
        known = sorted({t for cls in ENGINES.values() for t in cls.auto_types})
        raise ValueError(f"AutoDeploy knows no engine for {model_type} models (it serves {', '.join(known)} models)")
    accepting = [cls for cls in ranked if cls.auto_accepts(model)]
    if not accepting:
        raise ValueError(f"no {model_type} engine serves a model named {Path(model).name!r} (engines: "
                         f"{', '.join(cls.engine for cls in ranked)})")
    if accepting[0].auto_by_name:
        return accepting[0], f"{model_type} model {Path(model).name}: {accepting[0].engine}, by its name"
    names, skipped = ", ".join(cls.engine for cls in accepting), []
    by_name = f" for {Path(model).name}" if len(accepting) < len(ranked) else ""
    for cls in accepting:
        ok, why = installed(cls)
        if ok:
            return cls, (f"{model_type} model{by_name}: {cls.engine}, the first installed of {names}"
                         + (f" ({'; '.join(skipped)})" if skipped else ""))
        skipped.append(f"{cls.engine}: {why}")
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
        path = base_model if Path(base_model).is_dir() else \
            ModelManager(model_source=source).find_local(base_model) or base_model
        model_type = type or ModelManager.get_model_type(Path(base_model).name)
        engine, reason = choose(model_type, base_model)
        size = model_size_b(path if Path(path).exists() else base_model)
        memory_gb = gpu_memory()
        ngpus = gpus_needed(size, max_token_num, memory_gb) if engine.gpu_key else 0
        plan = DeployPlan(engine.engine, model_type, round(size, 4), ngpus,
                          f"{reason}; {size:.3g}B parameters, {max_token_num} tokens"
                          + (f", GPUs of {memory_gb:g} GB -> {ngpus} GPU(s)" if ngpus else ", on the CPU"))
        kwargs = {**engine.auto_params(ngpus, trust_remote_code, log_path), **kw}
        return engine, launcher, {**kwargs, "auto_plan": plan}

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
