"""Reading records from JSON, JSONL, CSV and Parquet files, local or ``s3://``, one at a time.

Each reader yields ``(position, unit, raw_record)``: the 1-based line (JSONL, CSV), record
index (JSON arrays) or row (Parquet). Only JSON arrays are read whole; the others stream.
"""

from __future__ import annotations

import contextlib
import csv
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.data.formats import LIST_FIELDS, DatasetError
from tasks.files import sha256_file
from tasks.settings import REPO_ROOT, data_roots, env, state_dir

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


def resolve_local(path: str | Path) -> Path:
    """An absolute path as it is; a relative one under ``LAZYLLM_DATA_PATH`` (or the working directory),
    which it may not leave."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    root = Path(env("LAZYLLM_DATA_PATH") or Path.cwd()).resolve()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise DatasetError(path, None, None, f"path traversal: the dataset name leaves the data root {root}")
    return resolved


def confine(path: str, also: tuple[Path, ...] = ()) -> str:
    """``path`` made absolute (a relative one from the repository) with ``..`` and links resolved, if it lies
    under a data root (``data_roots``) or a folder of ``also``; an ``s3://`` URI without ``..``. Anything else
    is a ValueError."""
    if path.startswith("s3://"):
        if ".." in path[5:].split("/") or not path[5:].strip("/"):
            raise ValueError(f"{path!r}: an S3 URI may not hold '..' segments or be empty")
        return path
    if "://" in path:
        raise ValueError(f"{path!r}: a dataset is a local file or an s3:// URI")
    resolved = (REPO_ROOT / Path(path).expanduser()).resolve()
    roots = [*data_roots(), *(p.resolve() for p in also)]
    if resolved.is_relative_to(state_dir()) or not any(resolved.is_relative_to(r) for r in roots):
        raise ValueError(f"{path} resolves to {resolved}, outside the data roots ({', '.join(map(str, roots))}); "
                         "put the file under one, or add its folder to FINEFLOW_DATA_ROOTS")
    return str(resolved)


@contextlib.contextmanager
def local_copy(path: str | Path) -> Iterator[tuple[Path, str]]:
    """``(local file, name for messages)``; an ``s3://`` object is fetched to a temporary file first."""
    if not str(path).startswith("s3://"):
        local = resolve_local(path)
        if not local.is_file():
            raise DatasetError(path, None, None, "file not found")
        yield local, str(path)
        return
    from botocore.exceptions import BotoCoreError, ClientError

    from tasks.services import storage

    uri = str(path)
    bucket, key = storage.split_uri(uri)
    if not key or ".." in key.split("/"):
        raise DatasetError(uri, None, None, "path traversal or empty key in the S3 URI")
    with tempfile.TemporaryDirectory(prefix="fineflow-data-") as tmp:
        local = Path(tmp) / Path(key).name
        try:
            storage.s3_client().download_file(bucket, key, str(local))
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NoSuchBucket"):
                raise DatasetError(uri, None, None, "S3 object not found") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise DatasetError(uri, None, None, f"S3 access denied ({code}): check the S3 credentials") from None
            raise DatasetError(uri, None, None, f"cannot read the S3 object: {code or e}") from None
        except BotoCoreError as e:
            raise DatasetError(uri, None, None, f"cannot read the S3 object: {e}") from None
        yield local, uri


def source_sha256(path: str | Path) -> str:
    """The sha256 of a dataset file's bytes, local or ``s3://``."""

    with local_copy(path) as (local, _):
        return sha256_file(local)


def _decode(raw: bytes, name: str, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(name, line, None, f"not valid UTF-8 (byte {e.start + 1} of the line)") from None


def read_json(path: Path, name: str) -> Iterator[tuple[int, str, Any]]:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DatasetError(name, raw[:e.start].count(b"\n") + 1, None, "not valid UTF-8") from None
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(name, e.lineno, None, f"malformed JSON: {e.msg} (column {e.colno})") from None
        for i, item in enumerate(items, start=1):
            yield i, "record", item
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            text = _decode(raw, name, lineno).lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                yield lineno, "line", json.loads(text)
            except json.JSONDecodeError as e:
                hint = "; a .json file holds a JSON array of records, a .jsonl file one record per line" \
                    if lineno == 1 else ""
                raise DatasetError(name, lineno, None, f"malformed JSON: {e.msg} (column {e.colno}){hint}") from None


def _csv_cell(field: str, value: str, name: str, line: int) -> Any:
    if field in LIST_FIELDS:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise DatasetError(name, line, field, "a CSV cell for a list field must hold JSON") from None
    if field == "label":
        try:
            return float(value)
        except ValueError:
            raise DatasetError(name, line, field, f"expected a number, got {value!r}") from None
    return value


def read_csv(path: Path, name: str) -> Iterator[tuple[int, str, Any]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            if not reader.fieldnames or not all(h and h.strip() for h in reader.fieldnames):
                raise DatasetError(name, 1, None, "the CSV needs a header row naming every column")
            for row in reader:
                line = reader.line_num
                if None in row:
                    raise DatasetError(name, line, None, "the row has more cells than the header has columns")
                missing = [k for k, v in row.items() if v is None]
                if missing:
                    raise DatasetError(name, line, missing[0], "the row has fewer cells than the header")
                yield line, "line", {k: _csv_cell(k, v, name, line) for k, v in row.items() if v != ""}
        except UnicodeDecodeError:
            raise DatasetError(name, reader.line_num + 1, None, "not valid UTF-8") from None
        except csv.Error as e:
            raise DatasetError(name, reader.line_num, None, f"malformed CSV: {e}") from None


def read_parquet(path: Path, name: str) -> Iterator[tuple[int, str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(name, None, None, f"not a readable Parquet file: {e}") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=2048):
        for record in batch.to_pylist():
            row += 1
            yield row, "row", {k: v for k, v in record.items() if v is not None}


def read_records(path: Path, name: str) -> Iterator[tuple[int, str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        return read_json(path, name)
    if suffix == ".csv":
        return read_csv(path, name)
    if suffix == ".parquet":
        return read_parquet(path, name)
    raise DatasetError(name, None, None, f"unsupported file type {suffix or '(none)'!r}; use {', '.join(SUFFIXES)}")
