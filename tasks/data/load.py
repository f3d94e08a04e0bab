"""``load_dataset``: read, recognise and validate a dataset, record by record."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tasks.data.formats import FORMATS, DatasetError, Where, check_format_name, detect, validate
from tasks.data.readers import local_copy, read_records


class Row(NamedTuple):
    line: int  # 1-based line, record or row
    unit: str  # "line", "record" or "row"
    format: str
    record: dict


def iter_dataset(path: str | Path, format: str | None = None, shown_as: str | None = None) -> Iterator[Row]:
    """Validated rows of ``path``; the format is taken from the first record unless given. ``shown_as`` is the
    name errors give the file (its URI, when ``path`` is a local copy).

    The first bad record raises ``DatasetError`` as soon as it is read.
    """
    check_format_name(format)
    with local_copy(path) as (local, name):
        name = shown_as or name
        fmt, n = format, 0
        try:
            for line, unit, raw in read_records(local, name):
                if fmt is None:
                    fmt = detect(raw)
                    if fmt is None:
                        keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
                        raise DatasetError(name, line, None, f"cannot tell the dataset format from {keys}; pass "
                                                             f"format= one of {', '.join(FORMATS)}", unit=unit)
                n += 1
                yield Row(line, unit, fmt, validate(raw, Where(name, line, unit, fmt)))
        except DatasetError as e:
            if e.format or not fmt:
                raise
            # A reading error (bad JSON, bad bytes) shows the schema too, once the format is known.
            raise DatasetError(e.path, e.line, e.field, e.problem, unit=e.unit, fmt=fmt) from None
        if n == 0:
            raise DatasetError(name, None, None, "dataset is empty", fmt=fmt)


@dataclass
class Dataset:
    path: str
    format: str
    records: list[dict] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # where each record came from
    unit: str = "line"

    def __len__(self) -> int:
        return len(self.records)


def load_dataset(path: str | Path, format: str | None = None) -> Dataset:
    """Every record of ``path`` (JSON, JSONL, CSV or Parquet; local or ``s3://``), validated."""
    dataset: Dataset | None = None
    for row in iter_dataset(path, format):
        if dataset is None:
            dataset = Dataset(str(path), row.format, unit=row.unit)
        dataset.records.append(row.record)
        dataset.lines.append(row.line)
    assert dataset is not None  # iter_dataset raises on an empty dataset
    return dataset


def load_alpaca(path: str | Path) -> list[dict[str, str]]:
    """The records of an alpaca dataset (what the alpacalora recipe trains on)."""
    return load_dataset(path, "alpaca").records
