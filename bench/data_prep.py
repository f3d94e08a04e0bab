"""Validation + tokenization throughput and peak memory, against a raw ``tokenizers`` loop on the same rows.

    .venv/bin/python bench/data_prep.py                   # 100k and 1M rows
    .venv/bin/python bench/data_prep.py --rows 20000      # a quick run

For each size it writes one synthetic alpaca JSONL file, then runs, each in a fresh
subprocess (so peak RSS is that run's own):
- baseline: read lines, ``json.loads``, ``str.format`` of the alpaca template, ``Tokenizer.encode_batch``
  (the same texts, so the same tokens: the ratio is the cost of validation and the prompter);
- fineflow: ``tasks.data.iter_dataset`` (format check of every record) -> prompt rendering ->
  ``token_lengths`` (batched ``encode_batch``), the path ``prepare`` takes for cutoff_len.
Prints rows/s, the fineflow/baseline time ratio and both peak RSS figures, and writes
``bench/results/data_prep.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "infra" / "models" / "tiny-llama"


def write_rows(path: Path, rows: int) -> None:
    from infra.synthetic import alpaca_records

    base = alpaca_records()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            r = base[i % len(base)]
            f.write(json.dumps({**r, "input": f"{r['input']} {i}"}) + "\n")


def run_baseline(path: Path) -> tuple[int, int]:
    from tasks.data.prepare import load_tokenizer, token_lengths
    from tasks.prompter import TEMPLATES

    tokenizer, template = load_tokenizer(TOKENIZER), TEMPLATES["alpaca"]["prompt"]

    def texts():
        with open(path, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                yield template.format(**r) + r["output"]

    return token_stats(token_lengths(texts(), tokenizer))


def run_fineflow(path: Path) -> tuple[int, int]:
    from tasks.data import iter_dataset
    from tasks.data.prepare import load_tokenizer, token_lengths
    from tasks.prompter import get_prompter, render_record

    tokenizer, prompter = load_tokenizer(TOKENIZER), get_prompter("alpaca")
    texts = (render_record(prompter, row.record) + row.record["output"] for row in iter_dataset(path, "alpaca"))
    return token_stats(token_lengths(texts, tokenizer))


def token_stats(lengths) -> tuple[int, int]:
    """(rows, tokens): both sides must agree, or they did not tokenize the same texts."""
    rows = tokens = 0
    for n in lengths:
        rows, tokens = rows + 1, tokens + n
    return rows, tokens


def child(which: str, path: Path) -> None:
    start = time.perf_counter()
    rows, tokens = (run_baseline if which == "baseline" else run_fineflow)(path)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "tokens": tokens, "seconds": seconds, "peak_mb": peak_mb}))


def measure(which: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", which, str(path)], check=True, capture_output=True,
                         text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--child", nargs=2, metavar=("WHICH", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]))
    lines = ["| rows | baseline rows/s | fineflow rows/s | time ratio | baseline peak RSS | fineflow peak RSS |",
             "| --- | --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            path = Path(tmp) / f"rows-{rows}.jsonl"
            write_rows(path, rows)
            base, ours = measure("baseline", path), measure("fineflow", path)
            assert base["rows"] == ours["rows"] == rows and base["tokens"] == ours["tokens"], (base, ours)
            lines.append(f"| {rows:,} | {rows / base['seconds']:,.0f} | {rows / ours['seconds']:,.0f} | "
                         f"{ours['seconds'] / base['seconds']:.2f}x | {base['peak_mb']:.0f} MB | "
                         f"{ours['peak_mb']:.0f} MB |")
            print(lines[-1], flush=True)
            path.unlink()
    table = "\n".join(lines) + "\n\nTime ratio: fineflow time / baseline time on the same file. Peak RSS is " \
                               "each subprocess's own; flat across sizes means the path streams.\n"
    print(table)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "data_prep.md").write_text(table)


if __name__ == "__main__":
    main()
