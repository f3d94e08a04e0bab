"""Dataset formats, file types, converters, and bad input: each bad kind is a clear, located error and
nothing is written."""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.data import FORMATS, DatasetError, load_dataset, prepare, read_jsonl, to_flagembedding, to_llamafactory
from tasks.data.formats import Where, schema_text, validate
from tasks.models import ModelManager
from tests.support.paths import TINY_MODEL

ALPACA = {"instruction": "Convert the word to upper case.", "input": "red fox", "output": "RED FOX"}
GOOD = {
    "alpaca": ALPACA,
    "sharegpt": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
                 "system": "be brief"},
    "openai": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "hello"}]},
    "text": {"text": "the quick brown fox"},
    "preference": {"instruction": "Say hi.", "chosen": "hi", "rejected": "go away"},
    "triplets": {"query": "fox", "pos": ["a fox is an animal"], "neg": ["a car"]},
    "rerank": {"query": "fox", "passage": "a fox is an animal", "label": 1},
}


def variants(fmt, n=4):
    """``n`` distinct records of ``fmt``."""
    out = []
    for i in range(n):
        r = json.loads(json.dumps(GOOD[fmt]))
        key = {"alpaca": "input", "text": "text", "preference": "instruction", "triplets": "query",
               "rerank": "passage"}.get(fmt)
        if key:
            r[key] = f"{r[key]} {i}"
        elif fmt == "sharegpt":
            r["conversations"][0]["value"] += f" {i}"
        else:
            r["messages"][1]["content"] += f" {i}"
        out.append(r)
    return out


def write(path, rows):
    """JSONL, JSON array, CSV or Parquet, by suffix; raw strings are written as JSONL lines."""
    if path.suffix == ".jsonl":
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                                for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    elif path.suffix == ".csv":
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fields)
            w.writeheader()
            w.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# -- formats and file types ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_format_in_every_file_type_is_detected_and_read(tmp_path, fmt, suffix):
    rows = variants(fmt)
    dataset = load_dataset(write(tmp_path / f"d{suffix}", rows))
    assert dataset.format == fmt and len(dataset) == 4
    got = dataset.records[0]
    for key, value in rows[0].items():
        assert got[key] == value or (key == "label" and got[key] == float(value))


def test_openai_tool_call_turns_are_valid(tmp_path):
    record = {"messages": [{"role": "user", "content": "weather?"},
                           {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {}}]},
                           {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}
    assert load_dataset(write(tmp_path / "d.jsonl", [record])).records == [record]


def test_lines_and_units_are_reported(tmp_path):
    assert load_dataset(write(tmp_path / "d.jsonl", ["", *variants("alpaca", 2)])).lines == [2, 3]
    assert load_dataset(write(tmp_path / "d.json", variants("alpaca", 2))).unit == "record"
    assert load_dataset(write(tmp_path / "d.parquet", variants("alpaca", 2))).unit == "row"


# -- converters -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, columns", [
    ("alpaca", {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}),
    ("sharegpt", {"messages": "conversations", "system": "system", "tools": "tools"}),
    ("openai", {"messages": "messages", "tools": "tools"}),
    ("preference", {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}),
])
def test_llamafactory_dataset_info(tmp_path, fmt, columns):
    dataset = load_dataset(write(tmp_path / "d.jsonl", variants(fmt)))
    out = to_llamafactory(dataset, tmp_path / "lf", name="mine")
    info = json.loads((out / "dataset_info.json").read_text())["mine"]
    # LLaMA-Factory reads every mapped column (a missing one is a KeyError mid-training): only present ones map.
    present = {k: v for k, v in columns.items() if any(v in r for r in dataset.records)}
    assert info["file_name"] == "mine.json" and info["columns"] == present
    assert info.get("formatting", "alpaca") == ("sharegpt" if fmt in ("sharegpt", "openai") else "alpaca")
    assert info.get("ranking", False) == (fmt == "preference")
    assert json.loads((out / "mine.json").read_text()) == dataset.records


def test_llamafactory_maps_only_columns_the_records_have_and_keeps_other_datasets(tmp_path):
    plain = load_dataset(write(tmp_path / "p.jsonl", [{"instruction": "a", "output": "b"}]))
    out = to_llamafactory(plain, tmp_path / "lf", name="train")
    to_llamafactory(plain, out, name="val")
    info = json.loads((out / "dataset_info.json").read_text())
    assert set(info) == {"train", "val"}
    assert info["train"]["columns"] == {"prompt": "instruction", "query": "input", "response": "output"}  # no system


def test_flagembedding_from_triplets_and_rerank_pairs(tmp_path):
    triplets = load_dataset(write(tmp_path / "t.jsonl", variants("triplets", 2)))
    rows = read_jsonl(to_flagembedding(triplets, tmp_path / "fe" / "t.jsonl"))
    assert rows == [{"query": r["query"], "pos": r["pos"], "neg": r["neg"]} for r in triplets.records]
    pairs = [{"query": "q1", "passage": "p1", "label": 1}, {"query": "q1", "passage": "n1", "label": 0},
             {"query": "q1", "passage": "n2", "label": 0.2}, {"query": "q2", "passage": "n3", "label": 0}]
    rows = read_jsonl(to_flagembedding(load_dataset(write(tmp_path / "r.jsonl", pairs)), tmp_path / "r_fe.jsonl"))
    assert rows == [{"query": "q1", "pos": ["p1"], "neg": ["n1", "n2"]}]  # q2 has no positive
    with pytest.raises(DatasetError, match="FlagEmbedding trains on triplets or rerank pairs, not alpaca"):
        to_flagembedding(load_dataset(write(tmp_path / "a.jsonl", variants("alpaca"))), tmp_path / "x.jsonl")
    with pytest.raises(DatasetError, match="LLaMA-Factory does not train on triplets"):
        to_llamafactory(triplets, tmp_path / "lf")


# -- bad input: each kind names where, and nothing is written -------------------------------------------------
A = json.dumps(ALPACA)
BAD_JSONL = [  # (what, third line, field, message)
    ("malformed JSON line", '{"instruction": "x", "output": ', None, "malformed JSON"),
    ("wrong type", '{"instruction": "x", "output": 5}', "output", "expected a string, got int"),
    ("missing field", '{"instruction": "x"}', "output", "missing required field"),
    ("empty field", '{"instruction": "  ", "output": "y"}', "instruction", "empty value where content is required"),
    ("misspelled field", '{"instruction": "x", "outptu": "y", "output": "z"}', "outptu",
     "unknown field.*did you mean 'output'"),
    ("mixed formats", '{"text": "just text"}', None, "mixed formats: this record looks like text, but the dataset is "
                                                     "alpaca"),
    ("record not an object", '["x", "y"]', None, "record is a list, not an object"),
]


@pytest.mark.parametrize("what, line3, field, message", BAD_JSONL, ids=[b[0] for b in BAD_JSONL])
def test_bad_jsonl_record(tmp_path, what, line3, field, message):
    path = write(tmp_path / "d.jsonl", [A, json.dumps({**ALPACA, "input": "2"}), line3, A])
    with pytest.raises(DatasetError, match=message) as e:
        prepare(path, tmp_path / "work", val_set_size=1, format=None)
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 3, field)
    assert "line 3" in str(e.value) and "expected alpaca records {instruction: non-empty string" in str(e.value)
    assert not (tmp_path / "work").exists()


BAD_RECORDS = [  # (what, format, record, field, message)
    ("sharegpt turns not alternating", "sharegpt", {"conversations": [{"from": "human", "value": "a"},
                                                                     {"from": "human", "value": "b"}]},
     "conversations[1].from", "must alternate"),
    ("sharegpt unknown role", "sharegpt", {"conversations": [{"from": "bot", "value": "a"}]},
     "conversations[0].from", "'bot' is not one of"),
    ("openai without an assistant answer", "openai", {"messages": [{"role": "user", "content": "a"}]},
     "messages[0].role", "last message must be from the assistant"),
    ("openai content not a string", "openai", {"messages": [{"role": "user", "content": ["a"]},
                                                            {"role": "assistant", "content": "b"}]},
     "messages[0].content", "expected a string, got list"),
    ("preference chosen equals rejected", "preference", {"instruction": "i", "chosen": "x", "rejected": "x"},
     "rejected", "identical"),
    ("triplet without positives", "triplets", {"query": "q", "pos": []}, "pos", "at least one entry"),
    ("triplet negative not a string", "triplets", {"query": "q", "pos": ["p"], "neg": ["n", 3]}, "neg[1]",
     "expected a non-empty string"),
    ("rerank label not a number", "rerank", {"query": "q", "passage": "p", "label": "yes"}, "label",
     "expected a number"),
    ("rerank label out of range", "rerank", {"query": "q", "passage": "p", "label": 3}, "label", "outside"),
]


@pytest.mark.parametrize("what, fmt, record, field, message", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_bad_record_of_each_format(tmp_path, what, fmt, record, field, message):
    path = write(tmp_path / "d.json", [*variants(fmt, 2), record])
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset(path, fmt)
    assert (e.value.line, e.value.unit, e.value.field, e.value.format) == (3, "record", field, fmt)
    assert f"{path}, record 3, field '{field}'" in str(e.value)


def test_empty_dataset(tmp_path):
    with pytest.raises(DatasetError, match="dataset is empty"):
        load_dataset(write(tmp_path / "d.jsonl", ["", "  "]))
    with pytest.raises(DatasetError, match="dataset is empty"):
        load_dataset(write(tmp_path / "d.json", []), "alpaca")


def test_all_rows_duplicates(tmp_path):
    path = write(tmp_path / "d.jsonl", [A] * 5)
    with pytest.raises(DatasetError, match="all 5 records are copies of one record"):
        prepare(path, tmp_path / "work", val_set_size=1)
    assert not (tmp_path / "work").exists()


def test_duplicates_are_dropped_and_counted(tmp_path):
    rows = variants("alpaca", 4)
    prepared = prepare(write(tmp_path / "d.jsonl", rows + rows[:2]), tmp_path / "work", val_set_size=1)
    assert prepared.n_duplicates == 2 and prepared.n_train + prepared.n_val == 4


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(A.encode() + b"\n" + b'{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(DatasetError, match="not valid UTF-8") as e:
        load_dataset(path)
    assert e.value.line == 2
    path = tmp_path / "d.csv"
    path.write_bytes(b"instruction,output\nok,fine\ncaf\xe9,x\n")
    with pytest.raises(DatasetError, match="not valid UTF-8"):
        load_dataset(path)


def test_rows_longer_than_cutoff_len_are_counted_or_rejected(tmp_path, caplog):
    rows = variants("alpaca", 4) + [{**ALPACA, "input": "word " * 300}]
    path = write(tmp_path / "d.jsonl", rows)
    with caplog.at_level("WARNING"):
        prepared = prepare(path, tmp_path / "warn", val_set_size=1, cutoff_len=128, tokenizer_path=str(TINY_MODEL))
    assert prepared.n_too_long == 1 and "1 of 5 records exceed cutoff_len=128" in caplog.text
    with pytest.raises(DatasetError, match=r"tokens exceed cutoff_len=128") as e:
        prepare(path, tmp_path / "reject", val_set_size=1, cutoff_len=128, tokenizer_path=str(TINY_MODEL),
                on_long="reject")
    assert e.value.line == 5 and not (tmp_path / "reject").exists()


def test_path_traversal_in_dataset_and_model_names(tmp_path, monkeypatch):
    monkeypatch.setenv("LAZYLLM_DATA_PATH", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    write(tmp_path / "secret.jsonl", variants("alpaca"))
    with pytest.raises(DatasetError, match="path traversal"):
        load_dataset("../secret.jsonl")
    write(tmp_path / "data" / "ok.jsonl", variants("alpaca"))
    assert len(load_dataset("ok.jsonl")) == 4
    with pytest.raises(ValueError, match="invalid model name"):
        ModelManager().download("../../etc")


def test_unknown_format_name_unsupported_type_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset format 'alpacca'; known: alpaca, sharegpt"):
        load_dataset(write(tmp_path / "d.jsonl", variants("alpaca")), "alpacca")
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(DatasetError, match="unsupported file type '.txt'"):
        load_dataset(tmp_path / "d.txt")
    with pytest.raises(DatasetError, match="file not found"):
        load_dataset(tmp_path / "nope.jsonl")


def test_undetectable_format(tmp_path):
    with pytest.raises(DatasetError, match=r"cannot tell the dataset format from \['prompt', 'response'\]"):
        load_dataset(write(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}]))


def test_bad_csv_and_parquet(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,output\na,b\nc,d,e\n")
    with pytest.raises(DatasetError, match="more cells than the header") as e:
        load_dataset(path)
    assert e.value.line == 3
    path.write_text("query,pos\nq,not json\n")
    with pytest.raises(DatasetError, match="must hold JSON") as e:
        load_dataset(path)
    assert e.value.field == "pos"
    path = write(tmp_path / "d.parquet", [{"instruction": "a", "output": 1}, {"instruction": "b", "output": 2}])
    with pytest.raises(DatasetError, match="expected a string, got int") as e:
        load_dataset(path)
    assert (e.value.unit, e.value.line, e.value.field) == ("row", 1, "output")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        load_dataset(tmp_path / "broken.parquet")


def test_json_file_that_is_neither_array_nor_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ALPACA, indent=1))
    with pytest.raises(DatasetError, match="a .json file holds a JSON array of records") as e:
        load_dataset(path)
    assert e.value.line == 1


# -- every validation error, exactly: file, line, field, problem and the expected schema ---------------------------

HUMAN, GPT = {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}
USER, ASSISTANT = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
EXACT_ERRORS = [
    ("sharegpt", {"conversations": []}, "conversations", "expected a non-empty list of turns"),
    ("sharegpt", {"conversations": "hi"}, "conversations", "expected a non-empty list of turns"),
    ("sharegpt", {"conversations": [HUMAN, "x"]}, "conversations[1]", "expected an object, got str"),
    ("sharegpt", {"conversations": [HUMAN, {"from": "bot", "value": "a"}]}, "conversations[1].from",
     "'bot' is not one of ['function_call', 'gpt', 'human', 'observation']"),
    ("sharegpt", {"conversations": [HUMAN, {"from": "gpt"}]}, "conversations[1].value", "missing required field"),
    ("sharegpt", {"conversations": [HUMAN, {"from": "gpt", "value": " "}]}, "conversations[1].value",
     "empty value where content is required"),
    ("sharegpt", {"conversations": [HUMAN, HUMAN]}, "conversations[1].from",
     "turn 1 is 'human'; turns must alternate human/observation then gpt/function_call"),
    ("sharegpt", {"conversations": [GPT, HUMAN]}, "conversations[0].from",
     "turn 0 is 'gpt'; turns must alternate human/observation then gpt/function_call"),
    ("sharegpt", {"conversations": [HUMAN, GPT, HUMAN]}, "conversations",
     "the last turn must be from gpt (an answer to learn)"),
    ("openai", {"messages": [{"role": "system", "content": "s"}, ASSISTANT]}, "messages", "no user message"),
    ("openai", {"messages": [USER]}, "messages[0].role", "the last message must be from the assistant"),
    ("openai", {"messages": [USER, ASSISTANT, USER]}, "messages[2].role",
     "the last message must be from the assistant"),
    ("openai", {"messages": [USER, {"role": "assistant", "content": 3}]}, "messages[1].content",
     "expected a string, got int '3'"),
    ("triplets", {"query": "q", "pos": "p"}, "pos", "expected a list of strings, got str"),
    ("triplets", {"query": "q", "pos": []}, "pos", "empty list; at least one entry is required"),
    ("triplets", {"query": "q", "pos": ["p"], "neg": ["n", " "]}, "neg[1]", "expected a non-empty string, got ' '"),
    ("rerank", {"query": "q", "passage": "p", "label": True}, "label", "expected a number, got bool True"),
    ("rerank", {"query": "q", "passage": "p", "label": "1"}, "label", "expected a number, got str '1'"),
    ("rerank", {"query": "q", "passage": "p", "label": 1.5}, "label", "1.5 is outside [0, 1]"),
    ("rerank", {"query": "q", "passage": "p", "label": -0.5}, "label", "-0.5 is outside [0, 1]"),
    ("preference", {"instruction": "i", "chosen": "c", "rejected": "c"}, "rejected",
     "chosen and rejected are identical"),
    ("alpaca", {"instruction": "i"}, "output", "missing required field"),
    ("alpaca", {"instruction": "i", "output": "o", "inptu": "x"}, "inptu",
     "unknown field(s) ['inptu']; did you mean 'input'?"),
    ("alpaca", {"instruction": "i", "output": "o", "zzz": 1}, "zzz", "unknown field(s) ['zzz']"),
    ("alpaca", ["i", "o"], None, "record is a list, not an object"),
    ("alpaca", {"messages": [USER, ASSISTANT]}, None,
     "mixed formats: this record looks like openai, but the dataset is alpaca"),
]


@pytest.mark.parametrize("fmt, record, field, problem", EXACT_ERRORS)
def test_each_bad_record_gets_its_exact_error(fmt, record, field, problem):
    with pytest.raises(DatasetError) as e:
        validate(record, Where("data.jsonl", 7, "line", fmt))
    where = "data.jsonl, line 7" + (f", field '{field}'" if field else "")
    assert str(e.value) == f"{where}: {problem} (expected {fmt} records {schema_text(fmt)})"
    assert (e.value.path, e.value.line, e.value.field, e.value.problem, e.value.format) == \
        ("data.jsonl", 7, field, problem, fmt)


def test_good_records_of_the_chat_formats_pass_and_are_normalised():
    tool_call = {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}
    assert validate({"messages": [USER, tool_call, {"role": "tool", "content": "r"}, ASSISTANT]},
                    Where("d", 1, "line", "openai"))["messages"][1] == tool_call
    call_with_text = {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}  # empty text is allowed
    assert validate({"messages": [USER, call_with_text, ASSISTANT]}, Where("d", 1, "line", "openai"))
    obs = {"from": "observation", "value": "o"}
    fc = {"from": "function_call", "value": "f"}
    assert validate({"conversations": [HUMAN, fc, obs, GPT]}, Where("d", 1, "line", "sharegpt"))
    assert validate({"query": "q", "passage": "p", "label": 1}, Where("d", 1, "line", "rerank"))["label"] == 1.0
    assert validate({"query": "q", "passage": "p", "label": 0}, Where("d", 1, "line", "rerank"))["label"] == 0.0
    assert validate({"instruction": "i", "output": "o"}, Where("d", 1, "line", "alpaca"))["input"] == ""
    assert schema_text("rerank") == \
        "{query: non-empty string, passage: non-empty string, label: number between 0 and 1}"
    assert schema_text("alpaca") == ("{instruction: non-empty string, input?: string, output: non-empty string, "
                                     "system?: string}")
    located = DatasetError("f.json", None, None, "empty file")
    assert str(located) == "f.json: empty file" and located.unit == "line"
    assert str(DatasetError("f.parquet", 3, "x", "bad", unit="row")) == "f.parquet, row 3, field 'x': bad"


def test_tool_only_turns_and_every_later_turn_are_checked():
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}
    bad_after_call = {"messages": [USER, call, {"role": "user", "content": 5}, ASSISTANT]}
    with pytest.raises(DatasetError, match=r"field 'messages\[2\].content': expected a string, got int"):
        validate(bad_after_call, Where("d", 1, "line", "openai"))
    with pytest.raises(DatasetError, match=r"field 'messages\[1\].content': expected a string, got NoneType"):
        validate({"messages": [USER, {"role": "assistant", "content": None}]}, Where("d", 1, "line", "openai"))
    with pytest.raises(DatasetError) as e:  # a long value is shown cut at 30 characters
        validate({"instruction": 12345678901234567890123456789012345, "output": "o"}, Where("d", 1, "line", "alpaca"))
    assert e.value.problem == f"expected a string, got int {'12345678901234567890123456789012345'[:30]!r}"


def test_the_did_you_mean_hint_names_the_one_closest_field():
    with pytest.raises(DatasetError) as e:
        validate({"instruction": "i", "output": "o", "outputs": "x"}, Where("d", 1, "line", "alpaca"))
    assert e.value.problem == "unknown field(s) ['outputs']; did you mean 'output'?"
    with pytest.raises(DatasetError, match="mixed formats: this record looks like preference"):
        validate({"instruction": "i", "chosen": "c", "rejected": "r"}, Where("d", 1, "line", "alpaca"))
