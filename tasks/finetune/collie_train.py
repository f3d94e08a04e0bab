"""LoRA finetuning with CoLLiE, run by ``CollieFinetune`` under torchrun in the collie environment.

    torchrun --nproc_per_node 8 tasks/finetune/collie_train.py --base_model BASE --data_path train.jsonl \\
        --output_dir out/lazyllm_lora --dp_size 8 --micro_batch_size 4 --batch_size 64

Standalone: it imports only CoLLiE, torch, transformers and peft (fineflow is not installed in that
environment). Records are the prepare step's JSONL: ``prompt`` (rendered) and ``output``; only the output
tokens count in the loss. Prints one ``FINEFLOW_METRIC {json}`` line per logging step, as ``train_lora.py``
does. CoLLiE needs CUDA GPUs with NCCL (``CollieFinetune.preflight`` checks before this runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRIC_PREFIX = "FINEFLOW_METRIC "  # the same marker as tasks.finetune.base (not importable here)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base_model", required=True)
    p.add_argument("--data_path", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--micro_batch_size", type=int, default=4)
    p.add_argument("--num_epochs", type=int, default=3)
    p.add_argument("--learning_rate", type=float, default=5e-4)
    p.add_argument("--dp_size", type=int, default=8)
    p.add_argument("--pp_size", type=int, default=1)
    p.add_argument("--tp_size", type=int, default=1)
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--lora_alpha", type=int, default=16)
    p.add_argument("--lora_dropout", type=float, default=0.05)
    p.add_argument("--lora_target_modules", default="[wo,wqkv]")
    p.add_argument("--modules_to_save", default="[tok_embeddings,output]")
    p.add_argument("--logging_steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


def module_list(value: str) -> list[str]:
    return [v.strip() for v in value.strip().strip("[]").split(",") if v.strip()]


def load_records(path: str, eos: str) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"input": r["prompt"], "output": r["output"] + eos} for r in rows]


def main(argv: list[str] | None = None) -> None:
    import torch
    from collie import Callback, CollieConfig, CollieDatasetForTraining, LlamaForCausalLM, Trainer
    from peft import LoraConfig, TaskType
    from transformers import AutoTokenizer

    args = parse_args(argv)
    config = CollieConfig.from_pretrained(args.base_model)
    config.dp_size, config.pp_size, config.tp_size = args.dp_size, args.pp_size, args.tp_size
    config.train_epochs = args.num_epochs
    config.train_micro_batch_size = args.micro_batch_size
    config.gradient_accumulation_steps = max(1, args.batch_size // (args.micro_batch_size * args.dp_size))
    config.seed = args.seed
    config.ds_config = {"bf16": {"enabled": True}}
    config.peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                    target_modules=module_list(args.lora_target_modules),
                                    modules_to_save=module_list(args.modules_to_save) or None,
                                    task_type=TaskType.CAUSAL_LM)
    tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    dataset = CollieDatasetForTraining(load_records(args.data_path, tokenizer.eos_token), tokenizer=tokenizer)
    model = LlamaForCausalLM.from_pretrained(args.base_model, config=config)

    class MetricPrinter(Callback):
        def on_train_batch_end(self, trainer, loss):
            step = trainer.global_batch_idx
            if step % args.logging_steps == 0:
                print(METRIC_PREFIX + json.dumps({"step": step, "loss": float(loss)}), flush=True)

    trainer = Trainer(model=model, config=config, tokenizer=tokenizer, train_dataset=dataset,
                      optimizer=torch.optim.AdamW(model.parameters(), lr=args.learning_rate),
                      callbacks=[MetricPrinter()])
    trainer.train()
    trainer.save_peft(args.output_dir)
    print(f"saved LoRA adapter to {args.output_dir}", flush=True)


if __name__ == "__main__":
    main()
