"""``AlpacaloraFinetune``: LoRA finetuning with PEFT + transformers' Trainer (``train_lora.py``), as a subprocess.

    trainer = AlpacaloraFinetune('infra/models/tiny-llama', '/tmp/out', max_steps=100)
    trainer.cmd('train.jsonl')   # [train argv, merge argv, copy argv]
    trainer('train.jsonl')       # runs them; returns merge_path

Runs in the main environment (its script is part of fineflow). More than one process
(``launchers.remote(ngpus=N)``) runs the script under ``torchrun --nproc_per_node N``.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from pydantic import Field

from tasks import envs
from tasks.core import Command
from tasks.finetune.base import FinetuneParams, MergedLoraFinetune, random_nccl_port
from tasks.settings import env


class AlpacaloraParams(FinetuneParams):
    """The contract's keyword arguments and defaults, then fineflow's additions (docs/components.md)."""

    owner: ClassVar[str] = "AlpacaloraFinetune"
    data_path: str | None = None
    batch_size: int = 64
    micro_batch_size: int = 4
    num_epochs: float = 2
    learning_rate: float = 5.0e-4
    cutoff_len: int = 1030
    filter_nums: int = 1024
    val_set_size: int = 200
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "[wo,wqkv]"
    modules_to_save: str = "[tok_embeddings,output]"
    deepspeed: str | None = None
    prompt_template_name: str = "alpaca"
    train_on_inputs: bool = True
    show_prompt: bool = False
    nccl_port: int | None = Field(default_factory=random_nccl_port)  # the contract: random in 19000-20500
    # fineflow's additions
    max_steps: int = -1  # > 0 caps training (tests, smoke runs)
    logging_steps: int = 5
    save_steps: int = 100
    seed: int = 42
    resume: bool = True  # continue from the newest checkpoint in target_path


# Passed to train_lora.py as --name value, in this order.
SCRIPT_ARGS = ("batch_size", "micro_batch_size", "num_epochs", "learning_rate", "cutoff_len", "val_set_size", "lora_r",
               "lora_alpha", "lora_dropout", "lora_target_modules", "modules_to_save", "prompt_template_name",
               "train_on_inputs", "max_steps", "logging_steps", "save_steps", "seed", "resume")


class AlpacaloraFinetune(MergedLoraFinetune):
    framework: ClassVar[str] = "alpacalora"
    auto_types: ClassVar[tuple[str, ...]] = ("llm",)
    auto_rank: ClassVar[int] = 20
    multinode: ClassVar[bool] = True
    Params: ClassVar[type[FinetuneParams]] = AlpacaloraParams

    @classmethod
    def auto_params(cls, plan, *, ctx_len: int, lora_r: int) -> dict[str, Any]:
        # train_lora.py accumulates batch_size // micro_batch_size micro batches per process.
        return {"micro_batch_size": plan.micro_batch_size,
                "batch_size": plan.micro_batch_size * plan.gradient_accumulation_steps,
                "cutoff_len": ctx_len, "lora_r": lora_r}

    def _data_file(self, name: str | None) -> str | None:
        if name is None or os.path.isabs(name) or os.path.exists(name):
            return name
        base = self.params.data_path or env("LAZYLLM_DATA_PATH")
        return os.path.join(base, name) if base else name

    def _python(self) -> list[str]:
        nproc = getattr(self.launcher, "ngpus", 1) or 1
        if nproc > 1:
            return [envs.bin_path(self.environment, "torchrun"), f"--nproc_per_node={nproc}",
                    f"--master_port={self.params.nccl_port}", "-m"]
        return [envs.bin_path(self.environment, "python"), "-m"]

    def train_command(self, trainset: str, valset: str | None = None) -> Command:
        argv = [*self._python(), "tasks.finetune.train_lora", "--base_model", self.base_model,
                "--data_path", self._data_file(trainset), "--output_dir", self.target_path]
        if valset:
            argv += ["--val_path", self._data_file(valset)]
        for key in SCRIPT_ARGS:
            argv += [f"--{key}", str(getattr(self.params, key))]
        if self.params.deepspeed:
            argv += ["--deepspeed", str(self.params.deepspeed)]
        return Command(argv, return_value=self.target_path, env=self.command_env())




def alpacalora(base_model: str, target_path: str, **kw) -> AlpacaloraFinetune:
    return AlpacaloraFinetune(base_model, target_path, **kw)
