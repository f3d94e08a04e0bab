"""Preparing streams: memory follows the number of records, not the file's size (a 20 MB file of one repeated
record)."""

import json
import tracemalloc

import pytest

from tasks.data import DatasetError, prepare, read_jsonl


def peak_memory(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_preparing_streams_memory_stays_flat_in_the_file_size(tmp_path):
    one = json.dumps({"instruction": "repeat " * 100, "output": "same"}) + "\n"
    repeated = tmp_path / "repeated.jsonl"
    repeated.write_text(one * (20_000_000 // len(one)))  # 20 MB of one record
    with pytest.raises(DatasetError, match="copies of one record"):
        prepare(repeated, tmp_path / "w1", val_set_size=1)
    size = repeated.stat().st_size
    peak = peak_memory(lambda: pytest.raises(DatasetError, prepare, repeated, tmp_path / "w1", val_set_size=1))
    assert peak < size / 20, f"peak {peak} bytes for a {size}-byte file"
    # As many distinct records, four times the bytes: the peak follows the count of records, not the bytes.
    peaks, sizes = [], []
    for words in (200, 800):
        path = tmp_path / f"distinct-{words}.jsonl"
        with open(path, "w") as f:
            for i in range(20_000):
                f.write(json.dumps({"instruction": f"record {i} " + "word " * words, "output": str(i)}) + "\n")
        sizes.append(path.stat().st_size)
        peaks.append(peak_memory(lambda: prepare(path, tmp_path / f"w-{words}", val_set_size=100)))
        prepared = prepare(path, tmp_path / f"w-{words}", val_set_size=100)
        assert prepared.n_train == 19_900 and len(read_jsonl(prepared.val_path)) == 100
    assert sizes[1] > 3.5 * sizes[0]
    assert peaks[1] < 1.3 * peaks[0] and peaks[1] < sizes[1] / 10, f"peaks {peaks} bytes for files of {sizes}"
