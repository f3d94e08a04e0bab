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
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from tasks.data.formats import DatasetError
from tasks.data.load import iter_dataset
from tasks.data.readers import local_copy
from tasks.files import sha256_file
from tasks.inference.prompts import renderer

log = logging.getLogger(__name__)


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


def render(records: list[dict[str, str]], style: str, model_path: str | None = None) -> list[dict[str, str]]:
    """Add the ``prompt`` the model sees, rendered in ``style`` (a prompter, or the chat template of the model in
    ``model_path``); ``output`` stays the target."""
    render_one = renderer(style, model_path)
    return [{**r, "prompt": render_one(r)} for r in records]


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


def check_lengths(path: str | Path, spill: Path, lines: list[int], unit: str, tokenizer_path: str, cutoff_len: int,
                  on_long: Literal["warn", "reject"]) -> int:
    """Count records (rendered, one per line of ``spill``) whose prompt + output exceed ``cutoff_len`` tokens;
    reject them when asked to. ``lines`` says where each came from in ``path``."""
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer is None:
        log.warning("%s has no tokenizer.json: record lengths are not checked against cutoff_len", tokenizer_path)
        return 0
    with open(spill, encoding="utf-8") as f:
        texts = ((r := json.loads(line))["prompt"] + r["output"] for line in f)
        long_rows = [(i, n) for i, n in enumerate(token_lengths(texts, tokenizer)) if n > cutoff_len]
    if long_rows and on_long == "reject":
        i, n = long_rows[0]
        raise DatasetError(path, lines[i], None, f"{n} tokens exceed cutoff_len={cutoff_len} ({len(long_rows)} such "
                           "records; set on_long='warn' to keep them truncated)", unit=unit)
    if long_rows:
        log.warning("%s: %d of %d records exceed cutoff_len=%d tokens and will be truncated (first: %s %d)",
                    path, len(long_rows), len(lines), cutoff_len, unit, lines[long_rows[0][0]])
    return len(long_rows)


class PreparedDataset(BaseModel):
    source: str
    hash: str  # of the records (deduplicated) and how they are split and rendered
    source_sha256: str | None = None  # of the file's bytes, as read (what the watch flow compares)
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


# The most characters one record may hold (all its fields together): a bound on what training and evaluation
# tokenize, so one huge record fails here, naming it, instead of exhausting memory after training.
MAX_RECORD_CHARS = 20_000


def record_chars(record: dict) -> tuple[int, str]:
    """The characters a record holds, and its largest field."""
    sizes = {k: len(v) if isinstance(v, str) else len(json.dumps(v, ensure_ascii=False)) for k, v in record.items()}
    return sum(sizes.values()), max(sizes, key=sizes.get)


def prepare(path: str | Path, workdir: Path, val_set_size: int = 200, prompt_template_name: str = "alpaca",
            seed: int = 42, *, format: str | None = "alpaca", cutoff_len: int | None = None,
            tokenizer_path: str | None = None, on_long: Literal["warn", "reject"] = "warn",
            max_record_chars: int = MAX_RECORD_CHARS) -> PreparedDataset:
    """Validate, dedupe, split and (alpaca) render ``path`` into ``workdir/<hash>/``.

    Records stream through: each unique one is validated, rendered and spilled to a temporary file as it is
    read, so memory grows with the number of records (an offset each), not with the size of the file.
    """

    render_one = None  # made at the first alpaca record (a chat template is the base model's: its tokenizer loads)
    records_hash, seen, offsets, lines = hashlib.sha256(), set(), [], []
    n_read, fmt, unit = 0, "alpaca", "line"
    with tempfile.TemporaryDirectory(prefix="fineflow-prepare-") as tmp, local_copy(path) as (local, name):
        spill = Path(tmp) / "records.jsonl"
        with open(spill, "wb") as out:
            for row in iter_dataset(local, format, shown_as=name):
                n_read, fmt, unit = n_read + 1, row.format, row.unit
                size, largest = record_chars(row.record)
                if size > max_record_chars:
                    raise DatasetError(path, row.line, largest, f"the record holds {size} characters, more than "
                                       f"data.max_record_chars={max_record_chars}", unit=unit, fmt=fmt)
                canonical = json.dumps(row.record, sort_keys=True, ensure_ascii=False).encode()
                key = hashlib.blake2b(canonical, digest_size=16).digest()
                if key in seen:
                    continue  # a repeat: the first copy stays
                seen.add(key)
                records_hash.update(canonical + b"\n")
                record = row.record
                if fmt == "alpaca":
                    render_one = render_one or renderer(prompt_template_name, tokenizer_path)
                    record = {**record, "prompt": render_one(record)}
                offsets.append(out.tell())
                lines.append(row.line)
                out.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        n_duplicates = n_read - len(offsets)
        if len(offsets) == 1 and n_duplicates:
            raise DatasetError(path, None, None, f"all {n_read} records are copies of one record", fmt=fmt)
        digest = content_hash({"records": records_hash.hexdigest(), "val_set_size": val_set_size,
                               "template": prompt_template_name, "seed": seed})
        n_too_long = 0
        if cutoff_len and tokenizer_path and fmt == "alpaca":
            n_too_long = check_lengths(path, spill, lines, unit, tokenizer_path, cutoff_len, on_long)
        train, val = split(list(range(len(offsets))), val_set_size, seed)
        out_dir = Path(workdir) / digest[:16]
        prepared = PreparedDataset(source=str(path), hash=digest, source_sha256=sha256_file(local), format=fmt,
                                   template=prompt_template_name,
                                   n_train=len(train), n_val=len(val), n_duplicates=n_duplicates,
                                   n_too_long=n_too_long, train_path=str(out_dir / "train.jsonl"),
                                   val_path=str(out_dir / "val.jsonl"))
        if not (out_dir / "manifest.json").is_file():
            aside = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
            shutil.rmtree(aside, ignore_errors=True)
            aside.mkdir(parents=True)
            with open(spill, "rb") as records:
                for name, order in (("train.jsonl", train), ("val.jsonl", val)):
                    with open(aside / name, "wb") as f:
                        for i in order:
                            records.seek(offsets[i])
                            f.write(records.readline())
            (aside / "manifest.json").write_text(prepared.model_dump_json(indent=1))
            shutil.rmtree(out_dir, ignore_errors=True)
            aside.rename(out_dir)
    if n_duplicates:
        log.warning("%s: dropped %d duplicate records", path, n_duplicates)
    return prepared
