"""The by-hand baseline of ``bench/real_model.py``: a LoRA finetune, merge and evaluation written plainly with
transformers + PEFT, as one would without fineflow (no orchestration, no tracking, no storage, no checks).

    python bench/by_hand_lora.py train BASE TRAIN.jsonl OUT --steps 60      # prints one JSON line
    python bench/by_hand_lora.py merge BASE OUT/adapter OUT/merged
    python bench/by_hand_lora.py evaluate MODEL VAL.jsonl --n 100            # batched greedy, final-number match

Records are alpaca rows (``instruction``, ``output``); the prompt is the model's chat template, the loss is on the
answer and the end-of-turn token only: what fineflow's AlpacaLoRA step does with ``prompt_template_name:
chat_template`` and ``train_on_inputs: false``.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def read(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def prompt(tok, record: dict) -> str:
    return tok.apply_chat_template([{"role": "user", "content": record["instruction"]}], tokenize=False,
                                   add_generation_prompt=True)


def train(base: str, data: str, out: str, steps: int, batch: int, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    rows = []
    for r in read(data):
        head = tok(prompt(tok, r), add_special_tokens=False).input_ids
        ids = tok(prompt(tok, r) + r["output"] + tok.eos_token, add_special_tokens=False).input_ids[:128]
        rows.append((ids, [-100] * len(head) + ids[len(head):]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    warmup = min(20, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))
    order = torch.randperm(len(rows)).tolist()
    model.train()
    tokens, start = 0, time.perf_counter()
    for step in range(steps):
        chosen = [rows[order[(step * batch + i) % len(rows)]] for i in range(batch)]
        width = max(len(ids) for ids, _ in chosen)
        ids = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i, _ in chosen])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chosen])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in chosen])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        tokens += int(mask.sum())
    runtime = time.perf_counter() - start
    model.save_pretrained(f"{out}/adapter")
    return {"steps": steps, "tokens": tokens, "train_loop_s": runtime, "tokens_per_s": tokens / runtime,
            "last_loss": float(loss)}


def merge(base: str, adapter: str, out: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)


def final_number(text: str) -> str:
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return numbers[-1].replace(",", "") if numbers else ""


def evaluate(path: str, data: str, n: int, max_new_tokens: int = 24, batch: int = 32) -> dict:
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    records = read(data)[:n]
    got: list[str] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(records), batch):
            enc = tok([prompt(tok, r) for r in records[i:i + batch]], return_tensors="pt", padding=True,
                      add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            got += tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    seconds = time.perf_counter() - start
    hits = sum(final_number(g) == final_number(r["output"]) for g, r in zip(got, records))
    return {"n": len(records), "exact_match": hits / len(records), "eval_s": seconds,
            "examples_per_s": len(records) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("base")
    t.add_argument("data")
    t.add_argument("out")
    t.add_argument("--steps", type=int, default=60)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=42)
    m = sub.add_parser("merge")
    m.add_argument("base")
    m.add_argument("adapter")
    m.add_argument("out")
    e = sub.add_parser("evaluate")
    e.add_argument("model")
    e.add_argument("data")
    e.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    if args.command == "train":
        print(json.dumps(train(args.base, args.data, args.out, args.steps, args.batch, args.lr, args.seed)))
    elif args.command == "merge":
        merge(args.base, args.adapter, args.out)
    else:
        print(json.dumps(evaluate(args.model, args.data, args.n)))


if __name__ == "__main__":
    main()
