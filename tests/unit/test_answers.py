"""What counts as the answer in a generation (``tasks.evaluate.answers``), as each kind of set defines it."""

import pytest

from tasks.evaluate.answers import answer_of, final_number, normalized_text


@pytest.mark.parametrize("text, number", [
    ("96", "96"),
    ("To calculate 5 + 91, we add them: 5 + 91 = 96.", "96"),
    ("Calculate 0 - 42 = -42", "-42"),
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
    ("#### 1,000", "1000"),
    ("The total is 12.50 dollars", "12.5"),
    ("3.0", "3"),
    ("no number here", ""),
])
def test_the_final_number(text, number):
    assert final_number(text) == number


def test_gsm8k_answers_compare_by_their_number():
    assert final_number("9 eggs at $2 each: 9 * 2 = 18.\n#### 18") == final_number("The answer is 18.")
    assert final_number("#### 18") != final_number("#### 19")


def test_squad_normalisation():
    assert normalized_text("The Eiffel Tower!") == normalized_text("eiffel tower") == "eiffel tower"
    assert normalized_text("  23   years ") == "23 years"


def test_answer_kinds_are_named():
    assert answer_of("exact")("  x \n") == "x"
    with pytest.raises(ValueError, match="unknown answer kind 'number'; known: exact, final_number, text"):
        answer_of("number")
