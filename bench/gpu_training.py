"""The AlpacaLoRA step's training on a CUDA GPU (bf16) against the same training on the CPU (float32), in one run.

    python -m bench.gpu_training --steps 120          # needs a CUDA GPU; writes results/gpu_training.{md,json}

Both runs are ``tasks.finetune.train_lora`` as the finetune step starts it (the tiny model, ``word_ops.json`` less
40 held-out rows, the same LoRA settings, seed and steps); the CPU run hides the GPU (``CUDA_VISIBLE_DEVICES=``).
Each adapter is merged by ``tasks.finetune.merge`` (float32, whatever it was trained in) and scored by
``tasks.evaluate.llm.score`` (greedy exact match and response loss on the held-out rows) beside the base. On the GPU,
the merged model's logits are compared with the unmerged base + adapter's: a bf16-trained adapter must merge into the
same function. The figures: train loop seconds and tokens/s (the Trainer's own), the ratio GPU/CPU, final loss,
held-out exact match, and the merge's largest logit difference. Then the built-in server on the merged model, on
each device (``device: cpu`` and ``cuda``): the same greedy answers, and output tokens/s at 16 concurrent streams.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "infra" / "models" / "tiny-llama"
DATA = ROOT / "infra" / "datasets" / "word_ops.json"
HELD_OUT = 40
TARGETS = "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"


def split(work: Path) -> tuple[Path, list[dict]]:
    rows = json.loads(DATA.read_text())
    train = work / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:-HELD_OUT]))
    return train, rows[-HELD_OUT:]


def train(device: str, data: Path, out: Path, steps: int) -> dict:
    """One run of the training script; its metric lines, the device and dtype it reported, and its wall time."""
    from tasks.finetune.base import METRIC_PREFIX
    from tasks.settings import environ

    env = {**environ(), "PYTHONUNBUFFERED": "1"} | ({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {})
    cmd = [sys.executable, "-m", "tasks.finetune.train_lora", "--base_model", str(BASE), "--data_path", str(data),
           "--output_dir", str(out), "--max_steps", str(steps), "--batch_size", "16", "--micro_batch_size", "16",
           "--learning_rate", "2e-3", "--lora_r", "16", "--lora_target_modules", TARGETS, "--modules_to_save", "[]",
           "--val_set_size", "0", "--save_steps", str(steps), "--logging_steps", "10", "--resume", "false"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"training on {device} failed ({done.returncode}):\n"
                         f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    metrics = [json.loads(line[len(METRIC_PREFIX):]) for line in done.stdout.splitlines()
               if line.startswith(METRIC_PREFIX)]
    final = next(m for m in reversed(metrics) if "train_runtime" in m)
    seen = next(m["num_input_tokens_seen"] for m in reversed(metrics) if "num_input_tokens_seen" in m)
    losses = [m["loss"] for m in metrics if "loss" in m]
    on = next(line for line in done.stdout.splitlines() if line.startswith("training in "))
    return {"device": device, "reported": on, "wall_s": round(wall, 1), "loop_s": round(final["train_runtime"], 2),
            "tokens_per_s": round(seen / final["train_runtime"], 1),
            "first_loss": losses[0], "last_loss": losses[-1]}


def merged_logit_gap(adapter: Path, merged: Path, held_out: list[dict], device: str = "cuda") -> float:
    """The largest difference, in float32 on ``device``, between the merged model's logits and base + adapter's."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tasks import inference

    tok = inference.load_tokenizer(str(merged))
    prompts = inference.render_prompts("alpaca", held_out, str(BASE))
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    with torch.inference_mode():
        base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32).to(device)
        wrapped = PeftModel.from_pretrained(base, adapter).eval()(**enc).logits
        flat = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).to(device).eval()(**enc).logits
    keep = enc.attention_mask.bool()
    return float((wrapped[keep] - flat[keep]).abs().max())


def serve(merged: Path, held_out: list[dict], device: str, clients: int = 16, tokens: int = 64) -> dict:
    """The built-in server (``tasks.servers.relay``) on ``device``: its greedy answers to the held-out prompts, and
    output tokens/s with ``clients`` concurrent requests of ``tokens`` tokens each (``ignore_eos``)."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from tasks import inference
    from tasks.servers.relay import create_app

    prompts = inference.render_prompts("alpaca", held_out, str(merged))
    app = create_app(str(merged), "bench", "alpaca", max_batch=clients, batch_wait_ms=5, device=device)
    with TestClient(app) as c:
        def complete(prompt: str, n: int, **extra) -> dict:
            return c.post("/v1/completions", json={"prompt": prompt, "max_tokens": n, **extra}).json()

        answers = [complete(p, 16)["choices"][0]["text"] for p in prompts]
        complete(prompts[0], tokens, ignore_eos=True)  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            done = list(pool.map(lambda p: complete(p, tokens, ignore_eos=True), prompts[:clients]))
        wall = time.perf_counter() - start
    app.state.batcher.close()
    made = sum(d["usage"]["completion_tokens"] for d in done)
    return {"answers": answers, "tokens_per_s": round(made / wall, 1), "largest_batch": app.state.batcher.largest}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--workdir", type=Path, default=ROOT / ".fineflow" / "bench" / "gpu_training")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_training.py needs a CUDA GPU: torch.cuda.is_available() is False here")
    from tasks.evaluate.llm import score
    from tasks.finetune.merge import copy_files, merge_lora

    args.workdir.mkdir(parents=True, exist_ok=True)
    data, held_out = split(args.workdir)
    runs, scores = {}, {"base": score(str(BASE), held_out, "alpaca").exact_match}
    for device in ("cpu", "cuda"):
        out = args.workdir / device
        runs[device] = train(device, data, out, args.steps)
        print(json.dumps(runs[device]), flush=True)
        merge_lora(str(BASE), str(out), str(out / "merged"))
        copy_files(str(BASE), str(out / "merged"), "tokeniz*")
        s = score(str(out / "merged"), held_out, "alpaca")
        runs[device] |= {"exact_match": s.exact_match, "val_loss": round(s.val_loss, 4)}
    gap = merged_logit_gap(args.workdir / "cuda", args.workdir / "cuda" / "merged", held_out)
    served = {d: serve(args.workdir / "cuda" / "merged", held_out, d) for d in ("cpu", "cuda")}
    same = sum(a == b for a, b in zip(served["cpu"]["answers"], served["cuda"]["answers"]))
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": args.steps,
              "held_out": HELD_OUT, "base_exact_match": scores["base"], "runs": runs,
              "speedup_tokens_per_s": round(runs["cuda"]["tokens_per_s"] / runs["cpu"]["tokens_per_s"], 2),
              "merged_vs_wrapped_max_logit_gap": gap,
              "serving": {d: {k: v for k, v in x.items() if k != "answers"} for d, x in served.items()},
              "served_answers_equal": same}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "gpu_training.json").write_text(json.dumps(result, indent=1))
    (args.results / "gpu_training.md").write_text(report(result))
    print(report(result))


def report(r: dict) -> str:
    rows = "\n".join(f"| {d} | {x['reported']} | {x['wall_s']} | {x['loop_s']} | {x['tokens_per_s']} | "
                     f"{x['first_loss']:.3f} → {x['last_loss']:.3f} | {x['exact_match']:.2f} | {x['val_loss']} |"
                     for d, x in r["runs"].items())
    return (f"# AlpacaLoRA training on {r['gpu']} (bf16) vs the CPU (float32), torch {r['torch']}\n\n"
            f"{r['steps']} steps of 16 rows, the tiny model, {r['held_out']} held-out rows "
            f"(base exact match {r['base_exact_match']:.2f}).\n\n"
            "| run | reported | wall (s) | loop (s) | tokens/s | loss | held-out exact match | held-out loss |\n"
            "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |\n"
            f"{rows}\n\nGPU/CPU tokens/s: **{r['speedup_tokens_per_s']}×**. The bf16 adapter merged in float32: "
            f"largest logit difference from base + adapter on the GPU {r['merged_vs_wrapped_max_logit_gap']:.2e}.\n"
            f"\nThe built-in server on the merged model (the GPU-trained one), float32: greedy answers to the "
            f"{r['held_out']} held-out prompts equal on both devices for {r['served_answers_equal']}/{r['held_out']}; "
            f"16 concurrent requests of 64 tokens: CPU {r['serving']['cpu']['tokens_per_s']} tokens/s, GPU "
            f"{r['serving']['cuda']['tokens_per_s']} tokens/s (largest batch "
            f"{r['serving']['cuda']['largest_batch']}).\n")


if __name__ == "__main__":
    main()
