"""``AlpacaloraFinetune``: LoRA finetuning with PEFT + transformers' Trainer, as a subprocess.

    trainer = AlpacaloraFinetune('infra/models/tiny-llama', '/tmp/out', max_steps=100)
    trainer.cmd('train.jsonl')   # [train argv, merge argv, copy argv]
    trainer('train.jsonl')       # runs them; returns merge_path
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tasks.core import Command, check_kwargs
from tasks.finetune.base import LazyLLMFinetuneBase, random_nccl_port

# The contract's defaults, then fineflow's own additions (documented in the README).
DEFAULTS: dict[str, Any] = {
    "data_path": None,
    "batch_size": 64,
    "micro_batch_size": 4,
    "num_epochs": 2,
    "learning_rate": 5.0e-4,
    "cutoff_len": 1030,
    "filter_nums": 1024,
    "val_set_size": 200,
    "lora_r": 8,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": "[wo,wqkv]",
    "modules_to_save": "[tok_embeddings,output]",
    "deepspeed": None,
    "prompt_template_name": "alpaca",
    "train_on_inputs": True,
    "show_prompt": False,
    "nccl_port": None,
}
FINEFLOW_EXTRAS: dict[str, Any] = {
    "max_steps": -1,  # > 0 caps training (tests, smoke runs)
    "logging_steps": 5,
    "save_steps": 100,
    "seed": 42,
    "resume": True,  # continue from the newest checkpoint in target_path
}


class AlpacaloraFinetune(LazyLLMFinetuneBase):
    def __init__(self, base_model: str, target_path: str, merge_path: str | None = None, model_name: str = "LLM",
                 cp_files: str = "tokeniz*", launcher: Any = None, **kw):
        check_kwargs(type(self).__name__, kw, [*DEFAULTS, *FINEFLOW_EXTRAS])
        if not merge_path:
            merge_path = os.path.join(target_path, "lazyllm_merge")
            target_path = os.path.join(target_path, "lazyllm_lora")
        super().__init__(base_model, target_path, launcher=launcher)
        self.merge_path = merge_path
        self.model_name = model_name
        self.cp_files = cp_files
        self.kw = {**DEFAULTS, **FINEFLOW_EXTRAS, **kw}
        if self.kw["nccl_port"] is None:
            self.kw["nccl_port"] = random_nccl_port()

    def _data_file(self, name: str | None) -> str | None:
        if name is None or os.path.isabs(name) or os.path.exists(name):
            return name
        base = self.kw["data_path"] or os.environ.get("LAZYLLM_DATA_PATH")
        return os.path.join(base, name) if base else name

    def train_cmd(self, trainset: str, valset: str | None = None) -> list[str]:
        argv = [sys.executable, "-m", "tasks.finetune.train_lora", "--base_model", self.base_model,
                "--data_path", self._data_file(trainset), "--output_dir", self.target_path]
        if valset:
            argv += ["--val_path", self._data_file(valset)]
        for key in ("batch_size", "micro_batch_size", "num_epochs", "learning_rate", "cutoff_len", "val_set_size",
                    "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "modules_to_save",
                    "prompt_template_name", "train_on_inputs", "max_steps", "logging_steps", "save_steps",
                    "seed", "resume"):
            argv += [f"--{key}", str(self.kw[key])]
        if self.kw["deepspeed"]:
            argv += ["--deepspeed", str(self.kw["deepspeed"])]
        return argv

    def merge_cmd(self) -> list[str]:
        return [sys.executable, "-m", "tasks.merge", "merge", "--base_model", self.base_model,
                "--lora_path", self.target_path, "--merge_path", self.merge_path]

    def copy_cmd(self) -> list[str]:
        return [sys.executable, "-m", "tasks.merge", "copy", "--src", self.base_model, "--dst", self.merge_path,
                "--pattern", self.cp_files]

    def cmd(self, trainset: str, valset: str | None = None) -> Command | list[str]:
        if not self.merge_path:
            return self.train_cmd(trainset, valset)
        return Command([self.train_cmd(trainset, valset), self.merge_cmd(), self.copy_cmd()],
                       return_value=self.merge_path)


def alpacalora(base_model: str, target_path: str, **kw) -> AlpacaloraFinetune:
    return AlpacaloraFinetune(base_model, target_path, **kw)
