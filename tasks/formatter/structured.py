"""``JsonFormatter`` and ``YamlFormatter``: read structured data out of model text, then select from it."""

from __future__ import annotations

import json
import re
from typing import Any

import json_repair
import yaml

from tasks.formatter.base import FormatterError
from tasks.formatter.selector import JsonLikeFormatter

_OPEN = {"{": "}", "[": "]"}
_FENCE = re.compile(r"^\s*```[\w-]*\s*\n(.*?)\n?```\s*$", re.S)


def _span_end(text: str, start: int) -> int | None:
    """Index just past the bracket that closes ``text[start]``, ignoring brackets inside strings."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _parse(chunk: str, complete: bool) -> Any:
    try:
        return json.loads(chunk)
    except json.JSONDecodeError:
        pass
    # Broken JSON is repaired, but prose in brackets ("[see above]") is not JSON: ask for a sign of it.
    if complete and not any(c in chunk for c in "\"':"):
        return None
    repaired = json_repair.loads(chunk)
    return repaired if isinstance(repaired, (dict, list)) and repaired else None


def extract_json(text: str) -> list[Any]:
    """Every top-level JSON object or array in ``text``, in order; broken ones are repaired where possible."""
    found, pos = [], 0
    while pos < len(text):
        if text[pos] not in _OPEN:
            pos += 1
            continue
        end = _span_end(text, pos)
        obj = _parse(text[pos:end], complete=end is not None)
        if isinstance(obj, (dict, list)):
            found.append(obj)
            pos = end if end is not None else len(text)
        else:
            pos += 1
    return found


class JsonFormatter(JsonLikeFormatter):
    """Extracts the JSON in a model's answer (one object, or a list when there are several), then selects.

    An answer that holds no JSON object or array comes back unchanged when there is no selector, and a
    selector on it is a ``FormatterError`` (the reference selects from an empty string instead: ``''`` for a
    slice, an error for an index): a model that answered in prose keeps its answer or says so.
    """

    def _load(self, msg: str) -> Any:
        found = extract_json(msg)
        if not found:
            if self._steps:
                raise FormatterError(f"no JSON object or array in the model output {msg[:80]!r}; "
                                     f"cannot apply {self._formatter!r}")
            return msg
        return found[0] if len(found) == 1 else found


class YamlFormatter(JsonLikeFormatter):
    """Loads YAML (safely; a surrounding code fence is ignored), then selects."""

    def _load(self, msg: str) -> Any:
        fenced = _FENCE.match(msg)
        try:
            return yaml.safe_load(fenced.group(1) if fenced else msg)
        except yaml.YAMLError as e:
            raise FormatterError(f"the model output is not valid YAML: {e}") from None
