"""``CollieFinetune``: LoRA finetuning with CoLLiE (``collie_train.py``) under torchrun, in its own environment.

    trainer = CollieFinetune('infra/models/tiny-llama', '/tmp/out', dp_size=8)
    trainer.cmd('train.jsonl')   # Command: [torchrun --nproc_per_node 8 collie_train.py ..., merge, copy]
    trainer('train.jsonl')       # preflight first: CoLLiE needs CUDA GPUs with NCCL

collie-lm 1.0.7 installs only beside old transformers/peft (``infra/envs/collie.txt``). It trains only
on CUDA GPUs: ``collie.utils.setup_distribution`` initialises an NCCL process group and pins each
rank to a CUDA device. ``preflight()`` says so at once on a machine without them, before the
environment is built or anything runs. The merge is AlpacaLoRA's (``tasks.finetune.merge``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from tasks import envs
from tasks.core import Command
from tasks.finetune.base import FinetuneParams, MergedLoraFinetune

SCRIPT = Path(__file__).with_name("collie_train.py")


class CollieParams(FinetuneParams):
    """The contract's keyword arguments and defaults (its ``auto_map``: ``ddp`` -> ``dp_size``, ``tp`` ->
    ``tp_size``), then fineflow's additions."""

    owner: ClassVar[str] = "CollieFinetune"
    aliases: ClassVar[dict[str, str]] = {"ddp": "dp_size", "tp": "tp_size"}
    data_path: str | None = None
    batch_size: int = 64
    micro_batch_size: int = 4
    num_epochs: int = 3
    learning_rate: float = 5.0e-4
    dp_size: int = 8
    pp_size: int = 1
    tp_size: int = 1
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str = "[wo,wqkv]"
    modules_to_save: str = "[tok_embeddings,output]"
    prompt_template_name: str = "alpaca"
    # fineflow's additions
    logging_steps: int = 10
    seed: int = 42


SCRIPT_ARGS = ("batch_size", "micro_batch_size", "num_epochs", "learning_rate", "dp_size", "pp_size", "tp_size",
               "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "modules_to_save", "logging_steps",
               "seed")


class CollieUnavailableError(RuntimeError):
    """CoLLiE cannot train on this machine."""


def cuda_with_nccl() -> tuple[bool, str]:
    """Whether this machine has what CoLLiE needs, and what it has."""
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    if not torch.distributed.is_nccl_available():
        return False, f"{torch.cuda.device_count()} CUDA device(s) but torch without NCCL"
    return True, f"{torch.cuda.device_count()} CUDA device(s) with NCCL"


class CollieFinetune(MergedLoraFinetune):
    framework: ClassVar[str] = "collie"
    auto_types: ClassVar[tuple[str, ...]] = ("llm",)
    auto_rank: ClassVar[int] = 30
    Params: ClassVar[type[FinetuneParams]] = CollieParams
    environment: ClassVar[str | None] = "collie"

    def preflight(self) -> None:
        ok, found = cuda_with_nccl()
        if not ok:
            raise CollieUnavailableError(f"CollieFinetune needs CUDA GPUs with NCCL (CoLLiE's setup_distribution "
                                         f"starts an NCCL process group on a CUDA device); this machine has {found}")

    @classmethod
    def auto_params(cls, plan, *, ctx_len: int, lora_r: int) -> dict[str, Any]:
        return {"micro_batch_size": plan.micro_batch_size, "dp_size": plan.ngpus, "lora_r": lora_r,
                "batch_size": plan.micro_batch_size * plan.gradient_accumulation_steps * plan.ngpus}

    def train_command(self, trainset: str, valset: str | None = None) -> Command:
        # CoLLiE's world is dp x tp x pp processes, one a GPU.
        nproc = self.params.dp_size * self.params.tp_size * self.params.pp_size
        argv = [envs.bin_path(self.environment, "torchrun"), f"--nproc_per_node={nproc}", str(SCRIPT),
                "--base_model", self.base_model, "--data_path", self.params.data_path or trainset,
                "--output_dir", self.target_path]
        for key in SCRIPT_ARGS:
            argv += [f"--{key}", str(getattr(self.params, key))]
        return Command(argv, return_value=self.target_path, env=self.command_env())



def collie(base_model: str, target_path: str, **kw) -> CollieFinetune:
    return CollieFinetune(base_model, target_path, **kw)
