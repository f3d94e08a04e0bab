"""LoRA training script run by ``AlpacaloraFinetune`` as a subprocess (PEFT + transformers Trainer).

    python -m tasks.finetune.train_lora --base_model infra/models/tiny-llama \\
        --data_path train.jsonl --val_path val.jsonl --output_dir out/lazyllm_lora --max_steps 50

Reads JSONL (or an alpaca JSON) records with ``prompt`` and ``output`` (records
without ``prompt`` are rendered with ``--prompt_template_name``), each tokenized when its batch is built, so
training starts as soon as the model is loaded whatever the file's size.  Prints one
``FINEFLOW_METRIC {json}`` line per logging step; checkpoints go to
``output_dir/checkpoint-N`` and a rerun resumes from the newest one that was wholly saved.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainerCallback,
                          TrainingArguments)

from tasks.finetune.base import METRIC_PREFIX, parse_module_list
from tasks.finetune.records import Encoded, read_records
from tasks.services.checkpoints import COMPLETE, last_complete


def str2bool(value: str) -> bool:
    return str(value).lower() in ("1", "true", "yes")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base_model", required=True)
    p.add_argument("--data_path", required=True)
    p.add_argument("--val_path")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--micro_batch_size", type=int, default=4)
    p.add_argument("--num_epochs", type=float, default=2)
    p.add_argument("--learning_rate", type=float, default=5e-4)
    p.add_argument("--cutoff_len", type=int, default=1030)
    p.add_argument("--val_set_size", type=int, default=200)
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--lora_alpha", type=int, default=32)
    p.add_argument("--lora_dropout", type=float, default=0.05)
    p.add_argument("--lora_target_modules", default="[wo,wqkv]")
    p.add_argument("--modules_to_save", default="[tok_embeddings,output]")
    p.add_argument("--prompt_template_name", default="alpaca")
    p.add_argument("--train_on_inputs", type=str2bool, default=True)
    p.add_argument("--max_steps", type=int, default=-1)
    p.add_argument("--logging_steps", type=int, default=5)
    p.add_argument("--save_steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", type=str2bool, default=True)
    p.add_argument("--deepspeed")
    return p.parse_args(argv)


def encoder(args: argparse.Namespace, tokenizer) -> Callable[[dict], dict]:
    """One record to its token ids and labels, its prompt rendered first where the file holds none (the pipeline's
    prepare step renders them; a file given by hand may not)."""
    from tasks.inference import encode_example, renderer

    style = args.prompt_template_name
    render = None

    def encode(record: dict) -> dict:
        nonlocal render
        if "prompt" not in record:
            render = render or renderer(style, args.base_model)
            record = {**record, "prompt": render(record)}
        return encode_example(tokenizer, style, record["prompt"], record["output"], args.cutoff_len,
                              args.train_on_inputs)

    return encode


def datasets(args: argparse.Namespace, tokenizer) -> tuple[Encoded, Encoded]:
    """Training and validation records, tokenized as batches are built (``tasks.finetune.records``)."""
    train = read_records(args.data_path)
    val = read_records(args.val_path) if args.val_path else []
    train_rows, val_rows = range(len(train)), range(len(val))
    if not args.val_path and args.val_set_size > 0 and len(train) > args.val_set_size:
        train_rows, val_rows, val = range(len(train) - args.val_set_size), range(len(train) - args.val_set_size,
                                                                                   len(train)), train
    encode = encoder(args, tokenizer)
    return Encoded(train, train_rows, encode), Encoded(val, val_rows, encode)


def lora_targets(model, wanted: list[str], what: str) -> list[str]:
    """Keep the names that exist in this architecture, say which were dropped."""
    if wanted in (["all-linear"], ["all_linear"]):
        return ["all-linear"]
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    kept = [m for m in wanted if m in present]
    dropped = [m for m in wanted if m not in present]
    if dropped:
        print(f"warning: {what} {dropped} not in {type(model).__name__}; using {kept}", flush=True)
    return kept


class MarkComplete(TrainerCallback):
    """Mark each checkpoint once Trainer has finished writing it: a process killed while saving leaves one
    without the mark, which ``checkpoints.last_complete`` never resumes from."""

    def on_save(self, args, state, control, **kw):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if path.is_dir() and state.is_world_process_zero:
            (path / COMPLETE).write_text(str(state.global_step))


class MetricPrinter(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
        logs = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}
        print(METRIC_PREFIX + json.dumps({"step": state.global_step, **logs}), flush=True)


def main(argv: list[str] | None = None) -> None:
    from peft import LoraConfig, get_peft_model

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(args.base_model, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    print(f"training in {model.dtype} on {device}", flush=True)
    targets = lora_targets(model, parse_module_list(args.lora_target_modules), "lora_target_modules")
    if not targets:
        raise SystemExit(f"none of lora_target_modules={args.lora_target_modules} exist in {args.base_model}")
    to_save = lora_targets(model, parse_module_list(args.modules_to_save), "modules_to_save") or None
    model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                             target_modules=targets, modules_to_save=to_save, task_type="CAUSAL_LM"))
    model.print_trainable_parameters()

    train_ds, val_ds = datasets(args, tokenizer)
    print(f"training on {len(train_ds)} records, validating on {len(val_ds)}", flush=True)

    training_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.micro_batch_size,
        per_device_eval_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=max(1, args.batch_size // args.micro_batch_size),
        num_train_epochs=args.num_epochs, max_steps=args.max_steps, learning_rate=args.learning_rate,
        warmup_steps=min(20, max(args.max_steps, 1) // 10), logging_steps=args.logging_steps,
        save_steps=args.save_steps, save_total_limit=2, eval_strategy="steps" if len(val_ds) else "no",
        eval_steps=args.save_steps if len(val_ds) else None, bf16=use_bf16, use_cpu=not torch.cuda.is_available(),
        report_to=[], seed=args.seed, deepspeed=args.deepspeed, disable_tqdm=True, dataloader_num_workers=0,
        include_num_input_tokens_seen=True,
    )
    print(f"world size {training_args.world_size}: the processes training together, on every node", flush=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds,
                      eval_dataset=val_ds if len(val_ds) else None,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
                      callbacks=[MetricPrinter(), MarkComplete()])
    last = last_complete(args.output_dir) if args.resume and Path(args.output_dir).is_dir() else None
    if last:
        print(f"resuming from {last}", flush=True)
    trainer.train(resume_from_checkpoint=last)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved LoRA adapter to {args.output_dir}", flush=True)


if __name__ == "__main__":
    main()
