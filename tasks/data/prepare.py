"""Dataset preparation: validate every record, dedupe, check lengths, split, hash, render prompts.

Nothing is written until every record has passed; the output directory appears
whole (written aside, then renamed) or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from tasks.data.formats import DatasetError
from tasks.data.load import Dataset, load_dataset
from tasks.prompter import get_prompter, render_record

log = logging.getLogger(__name__)


def content_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def dedupe(dataset: Dataset) -> int:
    """Drop exact repeats in place (the first copy stays); returns how many were dropped."""
    seen: set[bytes] = set()
    keep = []
    for i, record in enumerate(dataset.records):
        digest = hashlib.blake2b(json.dumps(record, sort_keys=True).encode(), digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
    dropped = len(dataset.records) - len(keep)
    if len(keep) == 1 and dropped:
        raise DatasetError(dataset.path, None, None, f"all {len(dataset.records)} records are copies of one record",
                           fmt=dataset.format)
    dataset.records = [dataset.records[i] for i in keep]
    dataset.lines = [dataset.lines[i] for i in keep]
    return dropped


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


def load_tokenizer(model_path: str | Path):
    """The model's fast tokenizer (``tokenizer.json``), or None when it has none."""
    from tokenizers import Tokenizer

    path = Path(model_path) / "tokenizer.json"
    if not path.is_file():
        return None
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # a saved tokenizer may pad or truncate batches; lengths must be the real ones
    tokenizer.no_truncation()
    return tokenizer


def token_lengths(texts: Iterable[str], tokenizer, batch_size: int = 1024) -> Iterator[int]:
    """Token counts of ``texts``, encoded in batches as they stream past (memory stays flat)."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield from (len(e.ids) for e in tokenizer.encode_batch(batch, add_special_tokens=False))
            batch = []
    if batch:
        yield from (len(e.ids) for e in tokenizer.encode_batch(batch, add_special_tokens=False))


def check_lengths(dataset: Dataset, rendered: list[dict], tokenizer_path: str, cutoff_len: int,
                  on_long: Literal["warn", "reject"]) -> int:
    """Count records whose prompt + output exceed ``cutoff_len`` tokens; reject them when asked to."""
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer is None:
        log.warning("%s has no tokenizer.json: record lengths are not checked against cutoff_len", tokenizer_path)
        return 0
    lengths = list(token_lengths((r["prompt"] + r["output"] for r in rendered), tokenizer))
    long_rows = [i for i, n in enumerate(lengths) if n > cutoff_len]
    if long_rows and on_long == "reject":
        i = long_rows[0]
        raise DatasetError(dataset.path, dataset.lines[i], None, f"{lengths[i]} tokens exceed cutoff_len="
                           f"{cutoff_len} ({len(long_rows)} such records; set on_long='warn' to keep them "
                           "truncated)", unit=dataset.unit)
    if long_rows:
        log.warning("%s: %d of %d records exceed cutoff_len=%d tokens and will be truncated (first: %s %d)",
                    dataset.path, len(long_rows), len(lengths), cutoff_len, dataset.unit, dataset.lines[long_rows[0]])
    return len(long_rows)


class PreparedDataset(BaseModel):
    source: str
    hash: str
    format: str = "alpaca"
    template: str
    n_train: int
    n_val: int
    n_duplicates: int = 0
    n_too_long: int = 0
    train_path: str
    val_path: str
    uri: str | None = None  # s3:// prefix holding train.jsonl, val.jsonl and manifest.json


def write_jsonl(records: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def prepare(path: str | Path, workdir: Path, val_set_size: int = 200, prompt_template_name: str = "alpaca",
            seed: int = 42, *, format: str | None = "alpaca", cutoff_len: int | None = None,
            tokenizer_path: str | None = None, on_long: Literal["warn", "reject"] = "warn") -> PreparedDataset:
    """Validate, dedupe, split and (alpaca) render ``path`` into ``workdir/<hash>/``."""
    prompter = get_prompter(prompt_template_name)
    dataset = load_dataset(path, format)
    n_duplicates = dedupe(dataset)
    digest = content_hash({"records": dataset.records, "val_set_size": val_set_size,
                           "template": prompt_template_name, "seed": seed})
    records = render(dataset.records, prompter) if dataset.format == "alpaca" else dataset.records
    n_too_long = 0
    if cutoff_len and tokenizer_path and dataset.format == "alpaca":
        n_too_long = check_lengths(dataset, records, tokenizer_path, cutoff_len, on_long)
    train, val = split(records, val_set_size, seed)
    out = Path(workdir) / digest[:16]
    prepared = PreparedDataset(source=str(path), hash=digest, format=dataset.format, template=prompt_template_name,
                               n_train=len(train), n_val=len(val), n_duplicates=n_duplicates, n_too_long=n_too_long,
                               train_path=str(out / "train.jsonl"), val_path=str(out / "val.jsonl"))
    if not (out / "manifest.json").is_file():
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_jsonl(train, tmp / "train.jsonl")
        write_jsonl(val, tmp / "val.jsonl")
        (tmp / "manifest.json").write_text(prepared.model_dump_json(indent=1))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    if n_duplicates:
        log.warning("%s: dropped %d duplicate records", path, n_duplicates)
    return prepared
