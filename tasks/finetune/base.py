"""Finetune component bases (the contract's ``LazyLLMFinetuneBase`` and ``DummyFinetune``)."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from tasks import launchers
from tasks.core import ComponentBase

METRIC_PREFIX = "FINEFLOW_METRIC "


def parse_metric_line(line: str) -> dict[str, Any] | None:
    """Training scripts print ``FINEFLOW_METRIC {json}`` lines; the step logs them while training runs."""
    if not line.startswith(METRIC_PREFIX):
        return None
    try:
        return json.loads(line[len(METRIC_PREFIX):])
    except json.JSONDecodeError:
        return None


class LazyLLMFinetuneBase(ComponentBase):
    """Holds the base model and the target path; the launcher defaults to ``remote(ngpus=1)``."""

    def __init__(self, base_model: str, target_path: str, *, launcher: Any = None):
        super().__init__(launcher=launcher or launchers.remote(ngpus=1))
        self.base_model = base_model
        self.target_path = target_path
        self.merge_path: str | None = None

    def __call__(self, *args, **kw):
        super().__call__(*args, **kw)
        return self.merge_path or self.target_path


class DummyFinetune(LazyLLMFinetuneBase):
    """A placeholder: its command echoes the keyword arguments it was built with."""

    def __init__(self, base_model: str = "base", target_path: str = "target", *, launcher: Any = None, **kw):
        super().__init__(base_model, target_path, launcher=launcher or launchers.remote())
        self.kw = kw

    def cmd(self, *args, **kw) -> str:
        return f"echo 'dummy finetune!, and init-args is {self.kw}'"


def parse_module_list(value: str | list[str] | None) -> list[str]:
    """``'[wo,wqkv]'`` or ``'wo, wqkv'`` or ``['wo']`` -> ``['wo', 'wqkv']``."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in re.split(r"[,\s]+", value.strip().strip("[]")) if v.strip()]


def random_nccl_port() -> int:
    return 19000 + int.from_bytes(os.urandom(2), "big") % 1500
