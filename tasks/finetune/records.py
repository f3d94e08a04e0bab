"""Training records read and tokenized when the trainer asks for them.

A JSON-lines file is indexed once (the byte offset of each record: 8 bytes apiece, about a second for millions of
lines); a record is read, rendered and tokenized when a batch that holds it is built. Memory stays flat and the first
step comes once the model is loaded, whatever the file's size (``bench/big_data.py``: 30 MB of records reached step 1
in 3.6 s at 456 MB, against 23.2 s and 947 MB when every record was tokenized first).
"""

from __future__ import annotations

import json
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import Dataset


class JsonLines(Sequence):
    """The records of a JSON-lines file by position, each read from disk when asked for."""

    def __init__(self, path: str | Path, log: Callable[[str], None] = print):
        self.path = Path(path)
        start = time.monotonic()
        self.offsets = array("q")
        position = 0
        with self.path.open("rb") as f:
            for line in f:
                if line.strip():
                    self.offsets.append(position)
                position += len(line)
        log(f"indexed {len(self.offsets):,} records of {self.path.name} ({position / 1e6:.1f} MB) in "
            f"{time.monotonic() - start:.1f} s; each is tokenized when its batch is built")

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        with self.path.open("rb") as f:
            f.seek(self.offsets[i])
            line = f.readline()
        try:
            return json.loads(line)
        except json.JSONDecodeError as e:
            with self.path.open("rb") as f:
                number = f.read(self.offsets[i]).count(b"\n") + 1
            raise ValueError(f"{self.path}:{number}: not a JSON record ({e.msg})") from None


def read_records(path: str | Path, log: Callable[[str], None] = print) -> Sequence[dict]:
    """A ``.jsonl`` file indexed (``JsonLines``); any other file is an alpaca JSON list, loaded whole."""
    from tasks.data import load_alpaca

    return JsonLines(path, log) if str(path).endswith(".jsonl") else load_alpaca(str(path))


class Encoded(Dataset):
    """``records[indices[i]]`` passed through ``encode`` when the trainer asks for item ``i``."""

    def __init__(self, records: Sequence[dict], indices: range, encode: Callable[[dict], dict]):
        self.records, self.indices, self.encode = records, indices, encode

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.encode(self.records[self.indices[i]])
