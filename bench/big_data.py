"""Time to the first training step and peak memory of the AlpacaLoRA trainer, a big dataset against a small one.

    .venv/bin/python -m bench.big_data                       # 3 MB and 30 MB of prepared records
    .venv/bin/python -m bench.big_data --small 2 --big 20    # other sizes (MB)

Writes two prepared JSON-lines files (records with ``prompt`` and ``output``, as the prepare step leaves them) of
the two sizes, then runs ``python -m tasks.finetune.train_lora`` on the tiny model for 2 steps on each, in a fresh
process: seconds from the start to the first step's metric line, and the trainer's peak RSS (VmHWM). The ratio
big / small is the figure: with records tokenized when their batch is built, neither grows with the file.
Writes ``bench/results/big_data.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tasks.finetune.base import METRIC_PREFIX

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MODEL = REPO / "infra" / "models" / "tiny-llama"
PROMPT = ("Below is an instruction that describes a task. Write a response.\n\n### Instruction:\n"
          "Calculate {} {} {} =\n\n### Response:\n")


def write_records(path: Path, megabytes: float, seed: int = 0) -> int:
    rng, written, count = random.Random(seed), 0, 0
    with path.open("w", encoding="utf-8") as f:
        while written < megabytes * 1e6:
            a, b, op = rng.randint(0, 999), rng.randint(0, 999), rng.choice("+-")
            line = json.dumps({"prompt": PROMPT.format(a, op, b), "output": str(a + b if op == "+" else a - b)}) + "\n"
            f.write(line)
            written, count = written + len(line), count + 1
    return count


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def first_step(data: Path, out: Path) -> dict:
    """Seconds to the first metric line, and peak RSS up to then (the process is stopped there)."""
    argv = [sys.executable, "-m", "tasks.finetune.train_lora", "--base_model", str(MODEL), "--data_path", str(data),
            "--output_dir", str(out), "--max_steps", "2", "--logging_steps", "1", "--save_steps", "1000",
            "--val_set_size", "0", "--batch_size", "4", "--micro_batch_size", "4", "--lora_target_modules",
            "[q_proj,v_proj]", "--modules_to_save", "[]"]
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, lines = [0.0], []

    def watch():  # VmHWM is the process's own peak; read it until it exits
        while proc.poll() is None:
            try:
                peak[0] = max(peak[0], peak_rss_mb(proc.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    seconds = None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(METRIC_PREFIX) and seconds is None:
            seconds = time.monotonic() - start
            peak[0] = max(peak[0], peak_rss_mb(proc.pid))
            proc.terminate()
            break
    proc.wait(timeout=60)
    if seconds is None:
        raise RuntimeError("the trainer ended before its first step:\n" + "".join(lines[-30:]))
    return {"first_step_s": round(seconds, 1), "peak_rss_mb": round(peak[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=float, default=3)
    parser.add_argument("--big", type=float, default=30)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="fineflow-bigdata-") as tmp:
        for name, mb in (("small", args.small), ("big", args.big)):
            data = Path(tmp) / f"{name}.jsonl"
            records = write_records(data, mb)
            print(f"{name}: {records:,} records, {data.stat().st_size / 1e6:.1f} MB ...", flush=True)
            rows[name] = {"records": records, "mb": round(data.stat().st_size / 1e6, 1),
                          **first_step(data, Path(tmp) / f"out-{name}")}
            print(f"  {rows[name]}", flush=True)
    ratio = {k: round(rows["big"][k] / rows["small"][k], 2) for k in ("first_step_s", "peak_rss_mb")}
    table = ["| file | records | MB | first step (s) | peak RSS (MB) |", "| --- | ---: | ---: | ---: | ---: |",
             *(f"| {name} | {r['records']:,} | {r['mb']} | {r['first_step_s']} | {r['peak_rss_mb']} |"
               for name, r in rows.items()),
             f"| big / small | | | {ratio['first_step_s']}x | {ratio['peak_rss_mb']}x |"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "big_data.json").write_text(json.dumps({"rows": rows, "ratio": ratio}, indent=1))
    (RESULTS / "big_data.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
