"""``AutoFinetune``: choose the framework and its batch layout from the model, the data shape and the hardware.

    trainer = AutoFinetune('internlm2-chat-7b', '/tmp/out', ctx_len=2048, batch_size=32, lora_r=8)
    trainer                      # <fineflow.llm.finetune type=LlamafactoryFinetune>
    trainer.auto_plan            # FinetunePlan(framework='llamafactory', ngpus=1, micro_batch_size=..., reason=...)

The rules, in one place (docs/components.md shows the same table):

- model type (``ModelManager.get_model_type``, or ``model_type=``) -> framework: the first *available* of the
  frameworks in ``tasks/finetune/frameworks.py`` whose ``auto_types`` hold it, by ``auto_rank`` (each framework
  declares both); a framework is available when it runs here (this environment, or an ``infra/envs`` file that
  builds it). tts, stt, sd, ocr and cross-modal embedding models cannot be finetuned: a clear error.
- model size (billions of parameters: from the name, ``7b``; else from the weights on disk),
  ``ctx_len``, ``batch_size``, ``lora_r``, the GPU memory (``LAZYLLM_GPU_MEMORY``, GB, default
  80) and the launcher's GPU count (or, without a launcher, as many GPUs as the weights need)
  -> micro batch size, gradient accumulation and GPU count, by ``plan_batches``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, model_validator

from tasks import envs, launchers
from tasks.finetune.base import FinetuneParams, LazyLLMFinetuneBase
from tasks.finetune.frameworks import FRAMEWORKS
from tasks.models import ModelManager
from tasks.models.size import BYTES_PER_PARAM, RESERVED, gpu_memory, model_size_b

NOT_FINETUNABLE = ("tts", "stt", "sd", "ocr", "cross_modal_embed")
WEIGHT_OVERHEAD = 1.2  # LoRA weights, their optimizer state and buffers on top of the frozen weights
ACTIVATION_GB_PER_B_PER_1K_TOKENS = 0.04  # activations of one sample, per billion parameters and 1k tokens


class AutoParams(FinetuneParams):
    """The contract's arguments; any other keyword goes to the chosen framework, which checks it (naming the
    closest of its own parameters) when AutoFinetune builds it, before anything runs."""

    model_config = ConfigDict(extra="allow")
    owner: ClassVar[str] = "AutoFinetune"
    source: str | None = None
    ctx_len: int = Field(1024, ge=1)
    batch_size: int = Field(32, ge=1)
    lora_r: int = Field(8, ge=1)
    model_type: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, data: Any) -> Any:
        return data  # the chosen framework's parameters are not known until it is chosen


@dataclass
class FinetunePlan:
    framework: str
    model_type: str
    model_size_b: float
    ngpus: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    reason: str


def plan_batches(size_b: float, ctx_len: int, batch_size: int, lora_r: int, gpu_memory_gb: float,
                 ngpus: int | None) -> tuple[int, int, int]:
    """(GPU count, micro batch size, gradient accumulation) that fit ``batch_size`` samples of ``ctx_len``
    tokens of a ``size_b``-billion model into GPUs of ``gpu_memory_gb``; ``ngpus`` None: as many as the
    weights need."""
    usable = gpu_memory_gb * (1 - RESERVED)
    weights_gb = size_b * BYTES_PER_PARAM * WEIGHT_OVERHEAD
    if ngpus is None:
        ngpus = max(1, math.ceil(weights_gb / usable))
    free = usable - weights_gb / ngpus  # the weights are sharded across the GPUs (ZeRO-3 / FSDP)
    if free <= 0:
        raise ValueError(f"a {size_b:g}B model needs about {weights_gb:.0f} GB for its weights; {ngpus} GPU(s) of "
                         f"{gpu_memory_gb:g} GB cannot hold it: use more GPUs or set LAZYLLM_GPU_MEMORY")
    per_sample = max(0.05, ACTIVATION_GB_PER_B_PER_1K_TOKENS * size_b * ctx_len / 1024) * (1 + (lora_r - 8) / 100)
    micro = max(1, min(math.ceil(batch_size / ngpus), int(free // per_sample)))  # never more than the batch
    micro = 2 ** int(math.log2(micro))  # a power of two: kernels and padding like it
    return ngpus, micro, max(1, math.ceil(batch_size / (micro * ngpus)))


def available(framework: str) -> bool:
    """Whether ``framework`` is implemented here and can run: in this environment, or in one its
    ``infra/envs`` file builds."""
    cls = FRAMEWORKS.get(framework)
    if cls is None:
        return False
    if cls.environment is envs.MAIN:
        return True
    try:
        envs.spec_path(cls.environment)
        return True
    except ValueError:
        return False


def ranked(model_type: str) -> list[str]:
    """The frameworks AutoFinetune may choose for ``model_type``, in order of preference."""
    return [name for name, cls in sorted(FRAMEWORKS.items(), key=lambda row: row[1].auto_rank)
            if model_type in cls.auto_types]


def choose(model_type: str) -> tuple[str, str]:
    """The framework for ``model_type`` and why."""
    if model_type in NOT_FINETUNABLE:
        types = sorted({t for cls in FRAMEWORKS.values() for t in cls.auto_types})
        raise ValueError(f"{model_type} models cannot be finetuned (AutoFinetune finetunes {', '.join(types)} "
                         "models)")
    candidates = ranked(model_type)
    if not candidates:
        raise ValueError(f"no finetune framework is known for {model_type} models")
    for name in candidates:
        if available(name):
            skipped = candidates[: candidates.index(name)]
            return name, (f"{model_type} model: {name}, the first available of {', '.join(candidates)}"
                          + (f" ({', '.join(skipped)} not available here)" if skipped else ""))
    raise ValueError(f"{model_type} models are finetuned by {' or '.join(candidates)}, and none is available "
                     "here (not implemented yet, or no environment file)")


class AutoFinetune(LazyLLMFinetuneBase):
    """Builds the chosen framework's component (``__new__`` returns it), with ``auto_plan`` telling why."""

    framework: ClassVar[str] = "auto"
    Params: ClassVar[type[FinetuneParams]] = AutoParams

    def __new__(cls, base_model: str, target_path: str, source: str | None = None, merge_path: str | None = None,
                ctx_len: int = 1024, batch_size: int = 32, lora_r: int = 8, launcher: Any = None,
                model_type: str | None = None, **kw):
        path = ModelManager(model_source=source).find_local(base_model) or base_model
        model_type = model_type or ModelManager.get_model_type(Path(base_model).name)
        framework, reason = choose(model_type)
        size = model_size_b(path if Path(path).exists() else base_model)
        memory_gb = gpu_memory()
        given = getattr(launcher, "ngpus", None) if launcher is not None else None
        ngpus, micro, accumulation = plan_batches(size, ctx_len, batch_size, lora_r, memory_gb, given or None)
        plan = FinetunePlan(framework, model_type, round(size, 4), ngpus, micro, accumulation,
                            f"{reason}; {size:.3g}B parameters, ctx_len {ctx_len}, batch {batch_size}, lora_r "
                            f"{lora_r}, {ngpus} GPU(s) of {memory_gb:g} GB -> micro batch {micro} x accumulation "
                            f"{accumulation}")
        chosen = FRAMEWORKS[framework]
        kwargs = {**chosen.auto_params(plan, ctx_len=ctx_len, lora_r=lora_r), **kw}
        if merge_path:
            kwargs["merge_path"] = merge_path
        trainer = chosen(path, target_path, launcher=launcher or launchers.remote(ngpus=ngpus), **kwargs)
        trainer.auto_plan = plan
        return trainer


def auto(base_model: str, target_path: str, **kw) -> LazyLLMFinetuneBase:
    return AutoFinetune(base_model, target_path, **kw)
