"""Production feedback turned into the next dataset (``tasks.pipeline.feedback``): prompts read back from recorded
requests, corrections and approved answers as targets, the replaced answer as ``rejected`` for preference
pairs, what teaches nothing or is already known left out and counted, the versions and times it came from."""

from __future__ import annotations

import json

from tasks.pipeline.feedback import new_records, prompt_of


def request(rid: str, prompt: dict, answer: str, version: str = "3") -> dict:
    return {"kind": "request", "request_id": rid, "version": version, "request": json.dumps(prompt),
            "answer": json.dumps({"choices": [{"text": answer}]})}


def feedback(rid: str, at: float, rating: int | None = None, correction: str | None = None) -> dict:
    return {"kind": "feedback", "request_id": rid, "at": at, "rating": rating, "correction": correction}


def test_prompts_are_read_back_from_completions_and_chats():
    rendered = ("Below is an instruction.\n\n### Instruction:\nConvert the word.\n\n### Input:\nsaw\n\n"
                "### Response:\n")
    assert prompt_of(json.dumps({"prompt": rendered})) == ("Convert the word.", "saw")
    assert prompt_of(json.dumps({"prompt": "### Instruction:\nSay hi\nBob\n\n### Response:\n"})) == ("Say hi\nBob", "")
    assert prompt_of(json.dumps({"prompt": "plain text"})) == ("plain text", "")
    chat = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
                         {"role": "assistant", "content": "a"}, {"role": "user", "content": "last"}]}
    assert prompt_of(json.dumps(chat)) == ("last", "")
    assert prompt_of("not json") is None and prompt_of(json.dumps({"input": ["x"]})) is None


def test_corrections_and_approved_answers_become_records_and_the_rest_is_counted():
    current = [{"instruction": "known", "input": "", "output": "K"}]
    recorded = [
        request("a", {"prompt": "upper saw"}, "saw"), feedback("a", 10, rating=-1, correction="SAW"),
        request("b", {"prompt": "upper cat"}, "CAT", version="4"), feedback("b", 20, rating=1),
        request("c", {"prompt": "upper dog"}, "dog"), feedback("c", 30, rating=-1),
        request("d", {"prompt": "upper owl"}, "owl"), feedback("d", 31, rating=0),
        request("e", {"prompt": "known"}, "K"), feedback("e", 32, rating=1),
        feedback("gone", 33, rating=1),
        request("f", {"prompt": "upper fox"}, "fox"), feedback("f", 34, rating=1), feedback("f", 35, correction="FOX"),
    ]
    added, why, source = new_records(recorded, current)
    assert added == [{"instruction": "upper saw", "input": "", "output": "SAW"},
                     {"instruction": "upper cat", "input": "", "output": "CAT"},
                     {"instruction": "upper fox", "input": "", "output": "FOX"}]  # the latest feedback counts
    assert why == {"no target (rated -1 or 0 without a correction)": 2, "the training set holds its prompt already": 1,
                   "its request was not recorded or holds no prompt": 1}
    assert source == {"versions": {"3": 2, "4": 1}, "time_range": ["1970-01-01T00:00:10Z", "1970-01-01T00:00:35Z"]}


def test_a_preference_set_gets_the_replaced_answer_as_rejected():
    current = [{"instruction": "i", "input": "x", "chosen": "X", "rejected": "x"}]
    recorded = [request("a", {"prompt": "upper saw"}, "saw"), feedback("a", 1, correction="SAW"),
                request("b", {"prompt": "upper cat"}, "CAT"), feedback("b", 2, rating=1),
                request("c", {"prompt": "upper owl"}, "OWL"), feedback("c", 3, correction="OWL")]
    added, why, _ = new_records(recorded, current)
    assert added == [{"instruction": "upper saw", "input": "", "chosen": "SAW", "rejected": "saw"}]
    assert why == {"no rejected answer for a preference pair": 2}


def test_a_dataset_built_from_feedback_is_named_by_its_card(tmp_path):
    from tasks.pipeline.feedback import card_of, described

    data = tmp_path / "d.json"
    data.write_text("[]")
    assert card_of(str(data)) is None  # an ordinary dataset
    (tmp_path / "d.json.card").write_text(json.dumps({"versions": {"4": 2, "3": 1}, "feedback_records": 3}))
    assert described(card_of(str(data))) == "production feedback of version 3, 4: 3 records"
    (tmp_path / "d.json.card").write_text("{not json")
    assert card_of(str(data)) is None  # it only informs: an unreadable card is no card
