"""Dataset preparation throughput against a bare ``json.loads`` loop over the same file, in one process.

    .venv/bin/python bench/data_prep.py --rows 100000

Prints rows/s for both and their ratio (what validation, splitting, prompt rendering
and writing cost over merely parsing), and writes ``bench/results/data_prep.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from infra.synthetic import alpaca_records
from tasks.data import prepare


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        base = alpaca_records()
        rows = ({**base[i % len(base)], "input": f"{base[i % len(base)]['input']} {i}"} for i in range(args.rows))
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

        def baseline():
            return [json.loads(line) for line in path.read_text().splitlines()]

        base_s = best_of(baseline, args.repeats)
        prep_s = best_of(lambda: prepare(path, Path(tmp) / "out", val_set_size=200), args.repeats)
    rows = args.rows
    table = (f"| what | rows/s |\n| --- | --- |\n| json.loads loop (baseline) | {rows / base_s:,.0f} |\n"
             f"| tasks.data.prepare | {rows / prep_s:,.0f} |\n\nprepare / baseline time ratio: "
             f"{prep_s / base_s:.2f}x over {rows:,} rows (best of {args.repeats})\n")
    print(table)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "data_prep.md").write_text(table)


if __name__ == "__main__":
    main()
