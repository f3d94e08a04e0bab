"""Dataset formats: what a record of each looks like, how a format is recognised, and validation.

``validate(fmt, record, where)`` returns the record normalised (optional fields filled)
or raises ``DatasetError`` naming the file, the line (or record/row) and the field, and
showing the expected schema.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEXT, OPTIONAL_TEXT = ("non-empty string", True), ("string", False)
# field -> (description, required). Order matters: it is the schema shown in errors.
SCHEMAS: dict[str, dict[str, tuple[str, bool]]] = {
    "alpaca": {"instruction": TEXT, "input": OPTIONAL_TEXT, "output": TEXT, "system": OPTIONAL_TEXT},
    "sharegpt": {"conversations": ("list of {from: human|gpt|observation|function_call, value: string}, "
                                   "human first, turns alternating", True),
                 "system": OPTIONAL_TEXT, "tools": OPTIONAL_TEXT},
    "openai": {"messages": ("list of {role: system|user|assistant|tool, content: string}, "
                            "with a user turn, ending with assistant", True), "tools": ("list", False)},
    "text": {"text": TEXT},
    "preference": {"instruction": TEXT, "input": OPTIONAL_TEXT, "chosen": TEXT, "rejected": TEXT},
    "triplets": {"query": TEXT, "pos": ("non-empty list of non-empty strings", True),
                 "neg": ("list of non-empty strings", False), "prompt": OPTIONAL_TEXT},
    "rerank": {"query": TEXT, "passage": TEXT, "label": ("number between 0 and 1", True)},
}
FORMATS = tuple(SCHEMAS)
# The keys that identify a format, most specific first.
SIGNATURES: list[tuple[str, frozenset[str]]] = [
    ("openai", frozenset({"messages"})), ("sharegpt", frozenset({"conversations"})),
    ("preference", frozenset({"chosen", "rejected"})), ("triplets", frozenset({"query", "pos"})),
    ("rerank", frozenset({"query", "passage"})), ("alpaca", frozenset({"instruction", "output"})),
    ("text", frozenset({"text"})),
]
LIST_FIELDS = {"conversations", "messages", "tools", "pos", "neg"}  # CSV cells holding JSON


def schema_text(fmt: str) -> str:
    return "{" + ", ".join(f"{k}{'' if req else '?'}: {desc}" for k, (desc, req) in SCHEMAS[fmt].items()) + "}"


class DatasetError(ValueError):
    """A dataset problem, located: ``path``, ``line`` (1-based line, record or row) and ``field``."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str, *,
                 unit: str = "line", fmt: str | None = None):
        self.path, self.line, self.field, self.problem, self.unit, self.format = \
            str(path), line, field, problem, unit, fmt
        where = f"{path}" + (f", {unit} {line}" if line is not None else "") + (f", field '{field}'" if field else "")
        expected = f" (expected {fmt} records {schema_text(fmt)})" if fmt else ""
        super().__init__(f"{where}: {problem}{expected}")


def check_format_name(fmt: str | None) -> None:
    if fmt is not None and fmt not in SCHEMAS:
        raise ValueError(f"unknown dataset format {fmt!r}; known: {', '.join(FORMATS)}")


def detect(record: Any) -> str | None:
    """The format whose identifying keys ``record`` has, or None."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    return next((fmt for fmt, signature in SIGNATURES if signature <= keys), None)


class Where:
    """Where a record came from, to build located errors."""

    def __init__(self, path: str, line: int, unit: str, fmt: str):
        self.path, self.line, self.unit, self.fmt = path, line, unit, fmt

    def error(self, field: str | None, problem: str) -> DatasetError:
        return DatasetError(self.path, self.line, field, problem, unit=self.unit, fmt=self.fmt)


def _string(where: Where, field: str, value: Any, required: bool) -> str:
    if not isinstance(value, str):
        raise where.error(field, f"expected a string, got {type(value).__name__} {str(value)[:30]!r}")
    if required and not value.strip():
        raise where.error(field, "empty value where content is required")
    return value


def _strings(where: Where, field: str, value: Any, non_empty: bool) -> list[str]:
    if not isinstance(value, list):
        raise where.error(field, f"expected a list of strings, got {type(value).__name__}")
    if non_empty and not value:
        raise where.error(field, "empty list; at least one entry is required")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise where.error(f"{field}[{i}]", f"expected a non-empty string, got {item!r}")
    return value


def _turns(where: Where, field: str, value: Any, role_key: str, text_key: str, roles: tuple[str, ...]) -> list:
    if not isinstance(value, list) or not value:
        raise where.error(field, "expected a non-empty list of turns")
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise where.error(f"{field}[{i}]", f"expected an object, got {type(turn).__name__}")
        if turn.get(role_key) not in roles:
            raise where.error(f"{field}[{i}].{role_key}", f"{turn.get(role_key)!r} is not one of {sorted(roles)}")
        if text_key not in turn:
            raise where.error(f"{field}[{i}].{text_key}", "missing required field")
        if turn.get("tool_calls") and turn[text_key] is None:
            continue  # an assistant turn that only calls tools
        _string(where, f"{field}[{i}].{text_key}", turn[text_key], required=not turn.get("tool_calls"))
    return value


def _sharegpt(where: Where, r: dict) -> None:
    turns = _turns(where, "conversations", r["conversations"], "from", "value",
                   ("human", "gpt", "observation", "function_call"))
    for i, turn in enumerate(turns):
        expected = ("human", "observation") if i % 2 == 0 else ("gpt", "function_call")
        if turn["from"] not in expected:
            raise where.error(f"conversations[{i}].from", f"turn {i} is {turn['from']!r}; turns must alternate "
                                                           "human/observation then gpt/function_call")
    if len(turns) % 2:
        raise where.error("conversations", "the last turn must be from gpt (an answer to learn)")


def _openai(where: Where, r: dict) -> None:
    messages = _turns(where, "messages", r["messages"], "role", "content",
                      ("system", "user", "assistant", "tool"))
    if not any(m["role"] == "user" for m in messages):
        raise where.error("messages", "no user message")
    if messages[-1]["role"] != "assistant":
        raise where.error(f"messages[{len(messages) - 1}].role", "the last message must be from the assistant")


def _label(where: Where, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.error("label", f"expected a number, got {type(value).__name__} {value!r}")
    if not 0 <= value <= 1:
        raise where.error("label", f"{value} is outside [0, 1]")
    return float(value)


CHECKS: dict[str, Callable[[Where, dict], None]] = {"sharegpt": _sharegpt, "openai": _openai}


def _check_not_mixed(record: dict, where: Where) -> None:
    other = detect(record)
    if other and other != where.fmt:
        raise where.error(None, f"mixed formats: this record looks like {other}, but the dataset is {where.fmt}")


def validate(record: Any, where: Where) -> dict:
    """``record`` checked against ``where.fmt``'s schema and normalised; a ``DatasetError`` otherwise."""
    fmt = where.fmt
    schema = SCHEMAS[fmt]
    if not isinstance(record, dict):
        raise where.error(None, f"record is a {type(record).__name__}, not an object")
    unknown = sorted(set(record) - set(schema))
    if unknown:
        _check_not_mixed(record, where)
        hint = difflib.get_close_matches(unknown[0], list(schema), n=1)
        raise where.error(unknown[0], f"unknown field(s) {unknown}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    for field, (_, required) in schema.items():
        if required and field not in record:
            _check_not_mixed(record, where)
            raise where.error(field, "missing required field")
    out = dict(record)
    for field, (desc, required) in schema.items():
        if field not in record:
            if field == "input":  # prompts always render an input, possibly empty
                out[field] = ""
            continue
        value = record[field]
        if desc.endswith("string"):
            out[field] = _string(where, field, value, required)
        elif field in ("pos", "neg"):
            out[field] = _strings(where, field, value, non_empty=field == "pos")
        elif field == "label":
            out[field] = _label(where, value)
    if fmt == "preference" and out["chosen"] == out["rejected"]:
        raise where.error("rejected", "chosen and rejected are identical")
    if fmt in CHECKS:
        CHECKS[fmt](where, record)
    return out
