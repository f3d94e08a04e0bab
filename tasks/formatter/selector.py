"""The selection grammar of ``JsonLikeFormatter`` and its subclasses.

On a list or tuple: ``[0]`` is an element; ``[0, 3, 6]``, ``[0:7:3]`` and ``[:]``
keep the container type. On a dict: ``[a]`` is a value; ``[a, c]`` and ``[:]`` are
lists of values; ``{a, c}`` is a sub-dict and ``{:}`` the whole dict. After a
multi-selection the rest of the selector applies to each selected item. A leading
``*`` returns a top-level multi-selection as a ``package``; ``[{a, b}]`` is
the same as ``{a, b}``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from tasks.formatter.base import FormatterError, LazyLLMFormatterBase, package


@dataclass(frozen=True)
class Step:
    kind: str  # "item", "items", "slice", "keys" or "all_keys"
    value: Any
    text: str  # the step as written, for error messages


def _key(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _slice(selector: str, text: str) -> slice:
    parts = text.split(":")
    if len(parts) > 3:
        raise FormatterError(f"selector {selector!r}: {text!r} has more than two ':'")
    bounds = []
    for part in parts:
        part = part.strip()
        if part in ("", "None"):
            bounds.append(None)
            continue
        try:
            bounds.append(int(part))
        except ValueError:
            raise FormatterError(f"selector {selector!r}: slice bound {part!r} is not an integer") from None
    return slice(*bounds)


def parse_selector(selector: str) -> tuple[bool, list[Step]]:
    """Parse ``selector`` into (return_package, steps); raise ``FormatterError`` naming what is wrong."""
    text = selector.strip()
    as_package = text.startswith("*")
    if as_package:
        text = text[1:]
        if not text.startswith("["):
            raise FormatterError(f"selector {selector!r}: '*' must be followed by '['")
    text = text.replace("[{", "{").replace("}]", "}")  # the reference also writes {a, b} as [{a, b}]
    steps: list[Step] = []
    pos = 0
    while pos < len(text):
        opener = text[pos]
        if opener.isspace():
            pos += 1
            continue
        if opener not in "[{":
            raise FormatterError(f"selector {selector!r}: expected '[' or '{{' at position {pos}, got {opener!r}")
        closer = "]" if opener == "[" else "}"
        end = text.find(closer, pos + 1)
        if end < 0:
            raise FormatterError(f"selector {selector!r}: {opener!r} at position {pos} is never closed")
        body = text[pos + 1:end]
        if any(c in body for c in "[]{}*"):
            raise FormatterError(f"selector {selector!r}: unexpected bracket or '*' inside {text[pos:end + 1]!r}")
        steps.append(_step(selector, opener, body, text[pos:end + 1]))
        pos = end + 1
    if not steps:
        raise FormatterError(f"selector {selector!r} selects nothing; write e.g. '[0]', '[a, b]' or '{{a}}'")
    return as_package, steps


def _step(selector: str, opener: str, body: str, written: str) -> Step:
    if not body.strip():
        raise FormatterError(f"selector {selector!r}: empty {written!r}")
    if opener == "{":
        if body.strip() == ":":
            return Step("all_keys", None, written)
        if ":" in body:
            raise FormatterError(f"selector {selector!r}: {written!r} mixes keys and ':'")
        return Step("keys", tuple(_key(k) for k in body.split(",") if k.strip()), written)
    if ":" in body:
        if "," in body:
            raise FormatterError(f"selector {selector!r}: {written!r} mixes a slice and a list ([a, b:c])")
        return Step("slice", _slice(selector, body), written)
    if "," in body:
        return Step("items", tuple(_key(k) for k in body.split(",") if k.strip()), written)
    return Step("item", _key(body), written)


def _rebuild(like: Any, items: list) -> Any:
    if isinstance(like, list):
        return items
    try:
        return type(like)(items)
    except TypeError:  # e.g. a namedtuple
        return tuple(items)


def _describe(data: Any) -> str:
    if isinstance(data, dict):
        return f"dict with keys {list(data)[:10]}"
    if isinstance(data, (list, tuple)):
        return f"{type(data).__name__} of length {len(data)}"
    return f"{type(data).__name__} {str(data)[:40]!r}"


def _pick(data: Any, key: str, step: Step, selector: str) -> Any:
    if isinstance(data, (list, tuple)):
        try:
            return data[int(key)]
        except ValueError:
            raise FormatterError(f"selector {selector!r}: {step.text} needs an integer index on a "
                                 f"{_describe(data)}, got {key!r}") from None
        except IndexError:
            raise FormatterError(f"selector {selector!r}: index {key} in {step.text} is out of range for a "
                                 f"{_describe(data)}") from None
    if isinstance(data, dict):
        if key in data:
            return data[key]
        try:
            if int(key) in data:
                return data[int(key)]
        except ValueError:
            pass
        raise FormatterError(f"selector {selector!r}: key {key!r} of {step.text} is not in the {_describe(data)}")
    raise FormatterError(f"selector {selector!r}: cannot apply {step.text} to a {_describe(data)}")


def select(data: Any, steps: list[Step], selector: str = "") -> Any:
    """Apply parsed ``steps`` to ``data``."""
    if not steps:
        return data
    step, rest = steps[0], steps[1:]
    if step.kind == "item":
        return select(_pick(data, step.value, step, selector), rest, selector)
    if step.kind == "items":
        picked = [select(_pick(data, k, step, selector), rest, selector) for k in step.value]
        return picked if isinstance(data, dict) else _rebuild(data, picked)
    if step.kind == "slice":
        if isinstance(data, (list, tuple)):
            return _rebuild(data, [select(x, rest, selector) for x in data[step.value]])
        if isinstance(data, dict):
            if step.value != slice(None):
                raise FormatterError(f"selector {selector!r}: a dict takes only [:] or {{:}}, not {step.text}")
            return [select(v, rest, selector) for v in data.values()]
        raise FormatterError(f"selector {selector!r}: cannot apply {step.text} to a {_describe(data)}")
    if not isinstance(data, dict):
        raise FormatterError(f"selector {selector!r}: {step.text} selects dict keys, but got a {_describe(data)}")
    keys = list(data) if step.kind == "all_keys" else step.value
    return {k: select(_pick(data, k, step, selector), rest, selector) for k in keys}


class JsonLikeFormatter(LazyLLMFormatterBase):
    """Selects from dicts, lists and tuples with the grammar above; no selector returns the data."""

    def __init__(self, formatter: str | None = None):
        self._formatter = formatter
        self._package, self._steps = parse_selector(formatter) if formatter else (False, [])

    def _parse_py_data_by_formatter(self, data: Any) -> Any:
        result = select(data, self._steps, self._formatter or "")
        if self._package and isinstance(result, (list, tuple)):
            return package(result)
        return result


class PythonFormatter(JsonLikeFormatter):
    """Like ``JsonLikeFormatter``; text holding a Python literal is read with ``ast.literal_eval`` first."""

    def _load(self, msg: str) -> Any:
        try:
            return ast.literal_eval(msg.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return msg
