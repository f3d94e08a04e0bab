"""Deterministic synthetic text for the embedded tiny model and its demo dataset.

The base model is pretrained on *raw* lines (``upper: abc -> ABC``) so it has the
skill but not the instruction format; the finetune dataset asks for the same
skills in alpaca format.  LoRA finetuning then measurably lifts exact-match on
held-out words, which is what the demo and the integration tests check.

    python -m infra.synthetic --out infra/datasets/word_ops.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"

# instruction text -> (raw pretraining prefix, transform)
SKILLS = {
    "Convert the word to upper case.": ("upper", str.upper),
    "Write the word twice, separated by a space.": ("twice", lambda w: f"{w} {w}"),
}


def random_words(n: int, seed: int, min_len: int = 3, max_len: int = 6) -> list[str]:
    """``n`` distinct random lowercase words, the same for the same seed."""
    rng = random.Random(seed)
    words: dict[str, None] = {}
    while len(words) < n:
        size = rng.randint(min_len, max_len)
        words["".join(rng.choice(LETTERS) for _ in range(size))] = None
    return list(words)


# Several raw layouts, so the skill is not tied to one position or one separator.
RAW_FORMATS = [
    "{op}: {word} -> {out}",
    "{op}({word}) = {out}",
    "{word}\n{op}:\n{out}",
]


def pretraining_lines(n: int, seed: int = 0, formats: int = len(RAW_FORMATS)) -> list[str]:
    """Raw skill lines (no instruction format) for the base model's pretraining."""
    rng = random.Random(seed)
    words = random_words(4000, seed=seed + 101)
    lines = []
    for _ in range(n):
        word = rng.choice(words)
        op, fn = rng.choice(list(SKILLS.values()))
        lines.append(rng.choice(RAW_FORMATS[:formats]).format(op=op, word=word, out=fn(word)))
    return lines


def alpaca_records(n: int, seed: int = 1) -> list[dict[str, str]]:
    """Alpaca records over words disjoint from the pretraining vocabulary seed."""
    rng = random.Random(seed)
    records = []
    for word in random_words(n, seed=seed + 202):
        instruction, (_, fn) = rng.choice(list(SKILLS.items()))
        records.append({"instruction": instruction, "input": word, "output": fn(word)})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--records", type=int, default=1200)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(alpaca_records(args.records), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.records} records to {args.out}")


if __name__ == "__main__":
    main()
