"""Dataset preparation: load alpaca JSON/JSONL, validate every record, split, hash, render prompts.

A bad record raises ``DatasetError`` naming the file, the line (JSONL, or the
line of a JSON syntax error) or record index (JSON arrays), and the field, before
any training step runs.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks.prompter import get_prompter, render_record

ALPACA_SCHEMA = {"instruction": "non-empty string", "input": "string (optional)", "output": "non-empty string"}


class DatasetError(ValueError):
    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str, *, unit: str = "line"):
        self.path, self.line, self.field = str(path), line, field
        where = f"{path}" + (f", {unit} {line}" if line is not None else "") + (f", field '{field}'" if field else "")
        schema = ", ".join(f"{k}: {v}" for k, v in ALPACA_SCHEMA.items())
        super().__init__(f"{where}: {problem} (expected alpaca records {{{schema}}})")


def validate_alpaca(record: Any, path: Path, line: int, unit: str = "line") -> dict[str, str]:
    if not isinstance(record, dict):
        raise DatasetError(path, line, None, f"record is a {type(record).__name__}, not an object", unit=unit)
    unknown = sorted(set(record) - set(ALPACA_SCHEMA))
    if unknown:
        raise DatasetError(path, line, unknown[0], f"unknown field(s) {unknown}", unit=unit)
    for field in ("instruction", "output"):
        if field not in record:
            raise DatasetError(path, line, field, "missing required field", unit=unit)
    for field in ALPACA_SCHEMA:
        value = record.get(field, "")
        if not isinstance(value, str):
            raise DatasetError(path, line, field, f"expected a string, got {type(value).__name__}", unit=unit)
        if field != "input" and not value.strip():
            raise DatasetError(path, line, field, "empty value", unit=unit)
    return {"instruction": record["instruction"], "input": record.get("input", ""), "output": record["output"]}


def load_alpaca(path: str | Path) -> list[dict[str, str]]:
    """Every record of an alpaca ``.json`` (array) or ``.jsonl`` file, validated."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, None, None, "file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(path, raw[:e.start].count(b"\n") + 1, None, "not valid UTF-8") from e
    records: list[dict[str, str]] = []
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(path, e.lineno, None, f"malformed JSON: {e.msg}") from e
        records = [validate_alpaca(item, path, i + 1, unit="record") for i, item in enumerate(items)]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(path, lineno, None, f"malformed JSON: {e.msg}") from e
            records.append(validate_alpaca(item, path, lineno))
    if not records:
        raise DatasetError(path, None, None, "dataset is empty")
    return records


def content_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def split(records: list[dict], val_set_size: int, seed: int = 42) -> tuple[list[dict], list[dict]]:
    """A deterministic shuffle, then the last ``val_set_size`` records are validation."""
    if val_set_size >= len(records):
        raise ValueError(f"val_set_size={val_set_size} leaves no training records (dataset has {len(records)})")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    shuffled = [records[i] for i in order]
    return shuffled[: len(shuffled) - val_set_size], shuffled[len(shuffled) - val_set_size:]


def render(records: list[dict[str, str]], prompter) -> list[dict[str, str]]:
    """Add the ``prompt`` the model sees, rendered by a prompter from ``get_prompter``; ``output`` stays the
    target."""
    return [{**r, "prompt": render_record(prompter, r)} for r in records]


class PreparedDataset(BaseModel):
    source: str
    hash: str
    template: str
    n_train: int
    n_val: int
    train_path: str
    val_path: str
    uri: str | None = None  # s3:// prefix holding train.jsonl, val.jsonl and manifest.json


def write_jsonl(records: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def prepare(path: str | Path, workdir: Path, val_set_size: int = 200, prompt_template_name: str = "alpaca",
            seed: int = 42) -> PreparedDataset:
    """Validate, split and render ``path`` into ``workdir/<hash>/``."""
    prompter = get_prompter(prompt_template_name)
    records = load_alpaca(path)
    digest = content_hash({"records": records, "val_set_size": val_set_size,
                           "template": prompt_template_name, "seed": seed})
    train, val = split(records, val_set_size, seed)
    out = Path(workdir) / digest[:16]
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(render(train, prompter), out / "train.jsonl")
    write_jsonl(render(val, prompter), out / "val.jsonl")
    prepared = PreparedDataset(source=str(path), hash=digest, template=prompt_template_name, n_train=len(train),
                               n_val=len(val), train_path=str(out / "train.jsonl"), val_path=str(out / "val.jsonl"))
    (out / "manifest.json").write_text(prepared.model_dump_json(indent=1))
    return prepared
