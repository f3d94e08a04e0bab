"""How big a model is and how much GPU memory it has to fit in: what AutoFinetune and AutoDeploy plan with."""

from __future__ import annotations

import math
import re
from pathlib import Path

from tasks.settings import env

BYTES_PER_PARAM = 2  # weights held in bf16/fp16 on a GPU
RESERVED = 0.1  # share of each GPU kept free (CUDA context, fragmentation)


def model_size_b(name_or_path: str) -> float:
    """Billions of parameters: ``7b`` / ``1.8B`` / ``1_8b`` in the name, else counted from the weights' headers."""
    match = re.search(r"(?<![\d._])(\d+(?:[._]\d+)?)[bB](?![a-zA-Z])", Path(name_or_path).name)
    if match:  # internlm2-chat-1_8b writes 1.8 with an underscore
        return float(match.group(1).replace("_", "."))
    weights = [p for p in Path(name_or_path).glob("*.safetensors")] if Path(name_or_path).is_dir() else []
    if weights:
        from safetensors import safe_open

        count = 0
        for path in weights:
            with safe_open(str(path), "pt") as f:
                count += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        return count / 1e9
    return 0.0


def gpu_memory() -> float:
    """GB of memory per GPU (``LAZYLLM_GPU_MEMORY``, default 80)."""
    return float(env("LAZYLLM_GPU_MEMORY"))
