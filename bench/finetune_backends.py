"""The same LoRA finetune through AlpacaLoRA and through LLaMA-Factory, and the pipeline's overhead.

    .venv/bin/python bench/finetune_backends.py              # 200 steps each
    .venv/bin/python bench/finetune_backends.py --steps 60   # a quick run

Same base (the embedded tiny LLaMA), same data (the bundled word_ops set, prepared once),
same hyperparameters (LoRA r=16 / alpha 32 on every linear layer, batch 16, lr 2e-3, cutoff
256, ``--steps`` steps). For each framework:
- train: the wall time of its training command, and train tokens/s: the input tokens the
  framework's own Trainer counted (``num_input_tokens_seen``) over its training-loop runtime;
- the orchestration overhead: the whole ``finetune`` flow for the LLaMA-Factory pipeline
  (download, prepare, train, export, evaluate, deploy, register, on the real local stack
  started for the run) against the bare framework commands run by hand on the same files
  (``llamafactory-cli train`` + ``export``).
Prints a table and writes ``bench/results/finetune_backends.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "infra" / "models" / "tiny-llama"
DATA = REPO / "infra" / "datasets" / "word_ops.json"
COMMON = dict(learning_rate=2e-3, lora_r=16, lora_alpha=32, cutoff_len=256, logging_steps=10)
PER_FRAMEWORK = {
    "alpacalora": dict(batch_size=16, micro_batch_size=16, save_steps=10_000, modules_to_save="[]",
                       lora_target_modules="[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"),
    "llamafactory": dict(per_device_train_batch_size=16, gradient_accumulation_steps=1, save_steps=10_000,
                         eval_steps=10_000, per_device_eval_batch_size=16, preprocessing_num_workers=1,
                         report_to="none", warmup_ratio=0.0),
}


def train_once(framework: str, steps: int, data, work: Path) -> dict:
    """Run one framework's training command; its Trainer's own token count and runtime give tokens/s."""
    from tasks import envs, launchers
    from tasks.finetune import get_framework

    rows: list[dict] = []

    def collect(line: str) -> None:
        rows.append(trainer.parse_metrics(line) or {})

    cls = get_framework(framework)
    trainer = cls(str(MODEL), str(work / framework), max_steps=steps, launcher=launchers.local(on_line=collect),
                  **COMMON, **PER_FRAMEWORK[framework])
    envs.ensure(trainer.environment)
    trainset, valset = trainer.prepare_data(data.train_path, data.val_path, data.format, work / f"{framework}-data")
    command = trainer.train_command(trainset, valset)
    start = time.monotonic()
    with launchers.follow(trainer.metrics_file(), collect):
        trainer.launcher.launch(command, name=framework)
    wall = time.monotonic() - start
    results = Path(trainer.target_path) / "train_results.json"  # LLaMA-Factory's summary
    summary = json.loads(results.read_text()) if results.exists() else {}
    for row in rows:  # AlpacaLoRA prints its summary (train_runtime, num_input_tokens_seen) as a metric line
        summary.update({k: v for k, v in row.items() if k in ("train_runtime", "num_input_tokens_seen")})
    tokens = summary.get("num_input_tokens_seen") or max((r.get("total_tokens", 0) for r in rows), default=0)
    runtime = summary["train_runtime"]
    return {"framework": framework, "steps": steps, "train_wall_s": wall, "train_loop_s": runtime,
            "tokens": tokens, "tokens_per_s": tokens / runtime, "trainer": trainer, "command": command}


def pipeline_overhead(steps: int, lf: dict) -> dict:
    """The whole flow for the LLaMA-Factory pipeline against its bare train + export commands."""
    from infra import stack
    from infra.demo import register_deployments
    from tasks import launchers
    from tasks.settings import Settings

    trainer = lf["trainer"]
    start = time.monotonic()
    launchers.local().launch(trainer.export_command(), name="export")
    bare = lf["train_wall_s"] + time.monotonic() - start
    stack.up("free")
    os.environ.update(Settings.load().client_env())
    try:
        register_deployments()
        from flows.finetune import finetune

        overrides = {"finetune": {"params": {"max_steps": steps, "save_steps": 10_000, "eval_steps": 10_000}}}
        start = time.monotonic()
        finetune("deployments/llamafactory.yaml", overrides)
        flow = time.monotonic() - start
    finally:
        stack.down()
    return {"bare_train_export_s": bare, "pipeline_s": flow, "overhead_ratio": flow / bare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="fineflow-bench-"))
    os.environ["FINEFLOW_HOME"] = str(home / "state")
    from tasks.data import prepare

    data = prepare(DATA, home / "data", val_set_size=60)
    runs = [train_once(name, args.steps, data, home) for name in ("alpacalora", "llamafactory")]
    overhead = pipeline_overhead(args.steps, runs[1])
    base = runs[0]
    lines = [f"# Finetune backends: {args.steps} LoRA steps on the embedded tiny LLaMA ({os.cpu_count()} CPUs)", "",
             "| framework | train wall (s) | train loop (s) | tokens | train tokens/s | tokens/s vs AlpacaLoRA |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        lines.append(f"| {r['framework']} | {r['train_wall_s']:.1f} | {r['train_loop_s']:.1f} | {r['tokens']:,} | "
                     f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x |")
    lines += ["", "| LLaMA-Factory pipeline | seconds |", "| --- | --- |",
              f"| bare `llamafactory-cli train` + `export` | {overhead['bare_train_export_s']:.1f} |",
              f"| whole `finetune` flow (prepare .. register) | {overhead['pipeline_s']:.1f} |",
              f"| orchestration overhead ratio | {overhead['overhead_ratio']:.2f}x |"]
    table = "\n".join(lines)
    print(table)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune_backends.md").write_text(table + "\n")
    plain = [{k: v for k, v in r.items() if k not in ("trainer", "command")} for r in runs]
    (out / "finetune_backends.json").write_text(json.dumps({"runs": plain, "pipeline": overhead}, indent=1))


if __name__ == "__main__":
    main()
