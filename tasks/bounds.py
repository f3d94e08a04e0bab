"""Ranges for the numbers a person types into a pipeline YAML, checked before anything runs.

One table for every backend's parameters (finetune and deploy), keyed by the parameter's name, so
``lora_r: -4`` or ``batch_size: 0`` fails while the config is read, naming the field and the range,
instead of inside a training subprocess after an MLflow run was created. ``tests/unit/test_bounds.py``
keeps the table in step with the backends: every numeric parameter has a range, every range a parameter.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Bound(NamedTuple):
    low: float
    high: float
    low_open: bool = False  # the low end itself is not allowed (a learning rate of 0)
    also: tuple[float, ...] = ()  # special values outside the range that mean something (max_steps: -1)


BIG = 10_000_000  # steps, tokens, samples: far beyond any run here, well below what overflows a framework
COUNT = Bound(1, 100_000)  # batch sizes, workers, parallel degrees
LENGTH = Bound(1, BIG)  # token lengths
STEPS = Bound(0, BIG, low_open=True)  # logging / save / eval intervals (LLaMA-Factory's may be a ratio < 1)
PORT = Bound(1, 65_535)
RATIO = Bound(0, 1)

BOUNDS: dict[str, Bound] = {
    # finetune
    "learning_rate": Bound(0, 1, low_open=True),
    "lora_r": Bound(1, 1024), "lora_alpha": Bound(1, 4096), "lora_dropout": Bound(0, 0.99),
    "batch_size": COUNT, "micro_batch_size": COUNT, "per_device_train_batch_size": COUNT,
    "per_device_eval_batch_size": COUNT, "gradient_accumulation_steps": COUNT, "train_group_size": COUNT,
    "preprocessing_num_workers": Bound(1, 256), "dp_size": COUNT, "pp_size": COUNT, "tp_size": COUNT,
    "max_steps": Bound(1, BIG, also=(-1,)), "num_epochs": Bound(0, 10_000, low_open=True),
    "num_train_epochs": Bound(0, 10_000, low_open=True), "max_samples": Bound(1, BIG),
    "cutoff_len": LENGTH, "query_max_len": LENGTH, "passage_max_len": LENGTH, "ctx_len": LENGTH,
    "max_token_num": LENGTH, "pad_to_multiple_of": Bound(1, 1024), "filter_nums": Bound(1, BIG),
    "val_set_size": Bound(0, BIG), "val_size": Bound(0, BIG),
    "logging_steps": STEPS, "save_steps": STEPS, "eval_steps": STEPS, "save_total_limit": Bound(1, 10_000),
    "warmup_ratio": RATIO, "weight_decay": Bound(0, 10), "temperature": Bound(0, 100, low_open=True),
    "pref_beta": Bound(0, 100, low_open=True), "pref_ftx": Bound(0, 100), "ddp_timeout": Bound(1, 2**31 - 1),
    "seed": Bound(0, 2**32 - 1), "nccl_port": PORT,
    # deploy
    "ready_timeout_s": Bound(0, 86_400, low_open=True), "batch_wait_ms": Bound(0, 60_000),
    "max_batch": COUNT, "max_batch_size": COUNT, "max_num_seqs": COUNT, "max_inputs": COUNT,
    "max_documents": COUNT, "threads": Bound(0, 256),  # 0: torch's default
    "max_body_bytes": Bound(1, 2**31),
    "tensor_parallel_size": COUNT, "pipeline_parallel_size": COUNT, "tp": COUNT, "worldSize": COUNT,
    "max_model_len": LENGTH, "max_tokens": LENGTH, "max_num_batched_tokens": LENGTH, "max_req_input_len": LENGTH,
    "max_req_total_len": LENGTH, "max_total_token_num": LENGTH, "maxSeqLen": LENGTH, "maxInputTokenLen": LENGTH,
    "maxPrefillTokens": LENGTH, "running_max_req_size": COUNT, "block_size": Bound(1, 65_536),
    "cpu_kvcache_space_gib": Bound(1, 4096), "gpu_memory_utilization": Bound(0, 1, low_open=True),
    "eos_id": Bound(0, BIG), "max_loras": Bound(1, 1024),
}


def describe(name: str, bound: Bound) -> str:
    low = f"{bound.low:g} < {name}" if bound.low_open else f"{bound.low:g} <= {name}"
    extra = "".join(f" or {v:g}" for v in bound.also)
    return f"{low} <= {bound.high:g}{extra}"


def out_of_range(values: dict[str, Any]) -> list[str]:
    """``name=value is out of range (low <= name <= high)`` for each bounded number outside its range."""
    problems = []
    for name, value in values.items():
        bound = BOUNDS.get(name)
        if bound is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        inside = (bound.low < value if bound.low_open else bound.low <= value) and value <= bound.high
        if not inside and value not in bound.also:
            problems.append(f"{name}={value!r} is out of range ({describe(name, bound)})")
    return problems


def check(owner: str, values: dict[str, Any]) -> None:
    """Raise a ValueError (a pydantic validation error inside a model) naming every number out of range."""
    if problems := out_of_range(values):
        raise ValueError(f"{owner}: {'; '.join(problems)}")
