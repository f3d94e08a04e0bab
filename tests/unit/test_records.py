"""Training records read and tokenized on demand (tasks.finetune.records, used by the AlpacaLoRA trainer)."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from tasks.finetune.records import Encoded, JsonLines, read_records


def write_lines(path, records, blank_every: int = 0) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i, r in enumerate(records):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            if blank_every and i % blank_every == 0:
                f.write("\n")


def test_records_are_found_by_position_blank_lines_skipped(tmp_path):
    records = [{"prompt": f"q{i} é", "output": str(i)} for i in range(50)]
    write_lines(tmp_path / "train.jsonl", records, blank_every=7)
    said = []
    lines = read_records(tmp_path / "train.jsonl", log=said.append)
    assert isinstance(lines, JsonLines) and len(lines) == 50
    assert [lines[i] for i in (0, 17, 49)] == [records[0], records[17], records[49]]
    assert lines[10:13] == records[10:13] and lines[-1] == records[-1]
    assert said and "indexed 50 records of train.jsonl" in said[0]


def test_a_broken_line_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a", "output": "b"}\n\n{"prompt": "c", "output": \n{"prompt": "d", "output": "e"}\n')
    lines = JsonLines(path, log=lambda _: None)
    assert lines[2] == {"prompt": "d", "output": "e"}
    with pytest.raises(ValueError, match=rf"{path}:3: not a JSON record"):
        lines[1]


def test_nothing_is_tokenized_before_it_is_asked_for_and_memory_does_not_grow_with_the_file(tmp_path):
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    write_lines(small, [{"prompt": "x" * 100, "output": "y"}] * 2_000)
    write_lines(big, [{"prompt": "x" * 100, "output": "y"}] * 40_000)
    encoded = []
    peaks = {}
    for path in (small, big):
        tracemalloc.start()
        records = JsonLines(path, log=lambda _: None)
        data = Encoded(records, range(len(records)), lambda r: encoded.append(r) or {"input_ids": [len(r["prompt"])]})
        peaks[path.name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(data) == len(records) and not encoded  # indexing encodes nothing
    assert data[39_999] == {"input_ids": [100]} and len(encoded) == 1
    # 20 times the records: the index grows by 8 bytes a record, not by the records themselves (~130 bytes each).
    assert peaks["big.jsonl"] < 1_000_000, peaks


def test_the_trainer_holds_out_the_tail_and_renders_records_without_a_prompt(tmp_path):
    from transformers import AutoTokenizer

    from tasks.finetune import train_lora
    from tasks.inference import encode_example, renderer
    from tests.conftest import TINY_MODEL

    records = [{"instruction": f"add {i} and 1", "input": "", "output": str(i + 1)} for i in range(10)]
    write_lines(tmp_path / "train.jsonl", records)
    args = train_lora.parse_args(["--base_model", str(TINY_MODEL), "--data_path", str(tmp_path / "train.jsonl"),
                                  "--output_dir", str(tmp_path / "out"), "--val_set_size", "3",
                                  "--cutoff_len", "64"])
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    train, val = train_lora.datasets(args, tokenizer)
    assert (len(train), len(val)) == (7, 3)
    prompt = renderer("alpaca")(records[8])
    assert val[1] == encode_example(tokenizer, "alpaca", prompt, "9", 64, True)  # record 8: the tail's second
