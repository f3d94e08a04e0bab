"""What counts as the answer in a generated text, as each kind of set defines it (``evaluate.answer`` in a pipeline
config): the whole text (``exact``), the final number (``final_number``: arithmetic, GSM8K) or SQuAD's normalised
text (``text``). Exact match compares the expected output and the generation after the same extraction."""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str:
    """The number after GSM8K's ``####`` where there is one, else the last number in the text; thousands commas
    and trailing zeros of a decimal do not count ("1,000.50" and "1000.5" are one answer). Empty: no number."""
    tail = text.rsplit("####", 1)[-1]
    numbers = NUMBER.findall(tail)
    if not numbers:
        return ""
    raw = numbers[-1].replace(",", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return raw
    return format(value.normalize(), "f") if value != value.to_integral_value() else str(int(value))


ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalized_text(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(ARTICLES.sub(" ", text).split())


ANSWERS: dict[str, Callable[[str], str]] = {
    "exact": str.strip,
    "final_number": final_number,
    "text": normalized_text,
}


def answer_of(kind: str) -> Callable[[str], str]:
    if kind not in ANSWERS:
        raise ValueError(f"unknown answer kind {kind!r}; known: {', '.join(ANSWERS)}")
    return ANSWERS[kind]
