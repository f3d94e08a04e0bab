"""Queries that carry file paths: ``'<lazyllm-query>' + JSON``, and ``FileFormatter``."""

from __future__ import annotations

import json
from typing import Any

from tasks.formatter.base import FormatterError, LazyLLMFormatterBase, package

LAZYLLM_QUERY_PREFIX = "<lazyllm-query>"
FILE_MODES = ("decode", "encode", "merge")


class QueryTypeError(TypeError, AssertionError):
    """A query or file list of the wrong type (an ``AssertionError`` too, as the contract documents)."""


def encode_query_with_filepaths(query: str | None = None, files: str | list[str] | None = None) -> str:
    """``query`` with its files as one string; without files, the query itself."""
    query = query or ""
    if not isinstance(query, str):
        raise QueryTypeError(f"query must be a str, got {type(query).__name__}")
    if isinstance(files, str):
        files = [files]
    if files is not None and not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        raise QueryTypeError(f"files must be a str or a list of str, got {files!r}")
    if not files and not query.lstrip().startswith(LAZYLLM_QUERY_PREFIX):
        return query
    # A plain query that happens to start with the prefix is encoded too, so decoding gives it back.
    return LAZYLLM_QUERY_PREFIX + json.dumps({"query": query, "files": files or []})


def decode_query_with_filepaths(query_files: str) -> Any:
    """``{'query': ..., 'files': [...]}`` for an encoded query (as it was encoded); a plain query comes back
    unchanged."""
    if not isinstance(query_files, str):
        raise QueryTypeError(f"query_files must be a str, got {type(query_files).__name__}")
    body = query_files.lstrip()
    if not body.startswith(LAZYLLM_QUERY_PREFIX):
        return query_files
    try:
        obj = json.loads(body[len(LAZYLLM_QUERY_PREFIX):])
    except json.JSONDecodeError as e:
        raise ValueError(f"JSON parsing failed for the encoded query: {e}") from None
    if isinstance(obj, dict) and obj.get("files") == [] and isinstance(obj.get("query"), str):
        return obj["query"]  # no files: the plain query, so any query survives encode -> decode
    return obj


def lazyllm_merge_query(*args: str) -> str:
    """Concatenate the queries and collect their files into one encoded query."""
    if len(args) == 1:
        return args[0]
    query, files = "", []
    for item in args:
        decoded = decode_query_with_filepaths(item)
        if isinstance(decoded, dict):
            query += decoded.get("query", "")
            files.extend(decoded.get("files", []))
        else:
            query += decoded
    return encode_query_with_filepaths(query, files)


class FileFormatter(LazyLLMFormatterBase):
    """``decode`` encoded queries to dicts, ``encode`` dicts to queries, or ``merge`` several into one."""

    def __init__(self, formatter: str = "decode"):
        self._mode = formatter.strip().lower()
        if self._mode not in FILE_MODES:
            raise FormatterError(f"FileFormatter mode must be one of {', '.join(FILE_MODES)}, got {formatter!r}")

    def _parse_py_data_by_formatter(self, py_data: Any) -> Any:
        if self._mode == "merge":
            return lazyllm_merge_query(*py_data) if isinstance(py_data, package) else py_data
        if isinstance(py_data, package):
            return package(self._parse_py_data_by_formatter(item) for item in py_data)
        if self._mode == "decode":
            return decode_query_with_filepaths(py_data) if isinstance(py_data, str) else py_data
        if isinstance(py_data, dict) and set(py_data) == {"query", "files"}:
            return encode_query_with_filepaths(**py_data)
        return py_data
