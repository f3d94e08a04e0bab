"""Deterministic synthetic text for the embedded tiny model and its demo dataset.

The base model is pretrained on *raw* skill lines (``upper: red fox -> RED FOX``) and
on alpaca examples of other instructions, so it knows the skills and the layout but
not these instructions; the finetune dataset asks for the skills as alpaca
instructions.  LoRA finetuning then measurably lifts exact-match on held-out rows,
which is what the demo and the integration tests check.

    python -m infra.synthetic --out infra/datasets/word_ops.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# A closed vocabulary: the tokenizer learns each word (and its upper case) as one token, so the
# skills are token-level maps a tiny model can hold.
WORDS = (
    "red blue green black white gold pink gray cat dog cow pig fox owl bee ant elk yak sun moon star "
    "rain snow wind fire ice sea lake hill rock sand tree leaf root seed rose corn rice bread milk tea "
    "cake salt oil egg box cup pan pot key lock door wall roof road ship boat car bus bike train king "
    "queen duke monk poet chef cook maid girl boy baby lion bear wolf deer frog fish crab duck swan hawk "
    "bell drum horn harp coin ring gem silk wool hat coat shoe sock belt bag map pen ink book page card "
    "desk bed lamp rug sofa fork bowl jar net rope nail tool saw axe gate farm barn mill camp tent hut "
    "town city port bay cape isle pond well cave peak mint sage herb bean pea plum pear lime fig kiwi nut"
).split()

# instruction text -> (raw pretraining prefix, transform)
SKILLS = {
    "Convert the word to upper case.": ("upper", str.upper),
    "Write the word twice.": ("twice", lambda w: f"{w} {w}"),
}

# Instructions the base sees in alpaca layout during pretraining; the finetune set uses SKILLS,
# which the base knows only as raw lines, so finetuning teaches new instructions in a known layout.
PRETRAIN_INSTRUCTIONS = {
    "Repeat the words.": ("copy", lambda w: w),
    "Give the first word.": ("first", lambda w: w.split()[0]),
    "Give the last word.": ("last", lambda w: w.split()[-1]),
}

# Raw layouts for pretraining.
RAW_FORMATS = [
    "{op}: {word} -> {out}",
    "task: {op}\ninput:\n{word}\noutput:\n{out}",
]


def pretraining_lines(n: int, seed: int = 0, formats: int = len(RAW_FORMATS)) -> list[str]:
    """Raw skill lines and alpaca examples of PRETRAIN_INSTRUCTIONS, for the base model's pretraining."""
    from tasks.prompter import Prompter

    alpaca = Prompter.from_template("alpaca")
    rng = random.Random(seed)
    raw_skills = [*SKILLS.values(), *PRETRAIN_INSTRUCTIONS.values()]
    lines = []
    for _ in range(n):
        phrase = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2)))
        if rng.random() < 0.3:
            instruction, (_, fn) = rng.choice(list(PRETRAIN_INSTRUCTIONS.items()))
            lines.append(alpaca.generate_prompt({"instruction": instruction, "input": phrase}) + fn(phrase))
        else:
            op, fn = rng.choice(raw_skills)
            lines.append(rng.choice(RAW_FORMATS[:formats]).format(op=op, word=phrase, out=fn(phrase)))
    return lines


def alpaca_records(seed: int = 1) -> list[dict[str, str]]:
    """One alpaca record per (skill, word), shuffled: a held-out row is a word the skill was not tuned on."""
    records = [{"instruction": instruction, "input": word, "output": fn(word)}
               for instruction, (_, fn) in SKILLS.items() for word in WORDS]
    random.Random(seed).shuffle(records)
    return records


def preference_records(seed: int = 2, n: int = 160) -> list[dict[str, str]]:
    """Preference pairs for DPO: the right skill's answer is chosen, the other skill's answer is rejected
    (the confusion a model that has not learnt the instructions makes)."""
    transforms = [fn for _, fn in SKILLS.values()]
    records = [{"instruction": r["instruction"], "input": r["input"], "chosen": r["output"],
                "rejected": next(other(r["input"]) for other in transforms if other(r["input"]) != r["output"])}
               for r in alpaca_records(seed)]
    return records[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preference", action="store_true", help="write preference pairs (for DPO) instead")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records = preference_records() if args.preference else alpaca_records()
    args.out.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} records to {args.out}")


if __name__ == "__main__":
    main()
