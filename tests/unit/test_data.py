import json

import pytest

from tasks.data import DatasetError, content_hash, load_alpaca, prepare, read_jsonl, split

GOOD = {"instruction": "Convert the word to upper case.", "input": "red fox", "output": "RED FOX"}


def test_loads_jsonl_and_json_array(alpaca_file, tmp_path):
    assert load_alpaca(alpaca_file([GOOD, {**GOOD, "input": ""}])) == [GOOD, {**GOOD, "input": ""}]
    array = tmp_path / "d.json"
    array.write_text(json.dumps([GOOD, {"instruction": "i", "output": "o"}]))
    assert load_alpaca(array)[1] == {"instruction": "i", "input": "", "output": "o"}


@pytest.mark.parametrize("bad_line, field, problem", [
    ('{"instruction": "x", "output": ', None, "malformed JSON"),
    ('{"instruction": "x"}', "output", "missing required field"),
    ('{"instruction": "x", "output": 3}', "output", "expected a string"),
    ('{"instruction": "  ", "output": "y"}', "instruction", "empty value"),
    ('{"instruction": "x", "output": "y", "outptu": "z"}', "outptu", "unknown field"),
    ('["x", "y"]', None, "not an object"),
])
def test_bad_record_names_file_line_and_field(alpaca_file, bad_line, field, problem):
    path = alpaca_file([GOOD, GOOD, bad_line, GOOD])
    with pytest.raises(DatasetError) as e:
        load_alpaca(path)
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 3, field)
    assert f"{path}, line 3" in str(e.value) and problem in str(e.value)
    assert "expected alpaca records" in str(e.value)


def test_json_array_errors_name_the_record(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, {"instruction": "x", "output": ""}]))
    with pytest.raises(DatasetError, match=r"record 2, field 'output': empty value"):
        load_alpaca(path)


def test_empty_missing_and_non_utf8(tmp_path, alpaca_file):
    with pytest.raises(DatasetError, match="dataset is empty"):
        load_alpaca(alpaca_file([]))
    with pytest.raises(DatasetError, match="file not found"):
        load_alpaca(tmp_path / "nope.jsonl")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(DatasetError, match="line 2: not valid UTF-8"):
        load_alpaca(path)


def test_split_is_deterministic_and_disjoint():
    records = [{**GOOD, "input": str(i)} for i in range(50)]
    train, val = split(records, 10, seed=1)
    assert (len(train), len(val)) == (40, 10)
    assert split(records, 10, seed=1) == (train, val)
    assert not {r["input"] for r in train} & {r["input"] for r in val}
    with pytest.raises(ValueError, match="leaves no training records"):
        split(records, 50)


def test_prepare_renders_prompts_and_hashes_content(alpaca_file, tmp_path):
    path = alpaca_file([{**GOOD, "input": str(i)} for i in range(30)])
    prepared = prepare(path, tmp_path / "work", val_set_size=5)
    assert (prepared.n_train, prepared.n_val) == (25, 5)
    row = read_jsonl(prepared.val_path)[0]
    assert row["prompt"].endswith(f"### Input:\n{row['input']}\n\n### Response:\n")
    again = prepare(path, tmp_path / "work2", val_set_size=5)
    assert again.hash == prepared.hash
    assert prepare(path, tmp_path / "work3", val_set_size=6).hash != prepared.hash
    assert content_hash({"a": 1, "b": 2}) == content_hash({"b": 2, "a": 1})


def test_prepare_renders_through_the_named_prompter(alpaca_file, tmp_path):
    from tasks.prompter import AlpacaPrompter

    path = alpaca_file([{**GOOD, "input": str(i)} for i in range(10)])
    prepared = prepare(path, tmp_path / "work", val_set_size=2, prompt_template_name="lazyllm_alpaca")
    row = read_jsonl(prepared.train_path)[0]
    expected = AlpacaPrompter("{instruction}", extra_keys=["input"]).generate_prompt(
        {"instruction": row["instruction"], "input": row["input"]})
    assert row["prompt"] == expected and row["output"] not in row["prompt"]
    assert prepared.template == "lazyllm_alpaca"
    assert prepared.hash != prepare(path, tmp_path / "w2", val_set_size=2).hash
