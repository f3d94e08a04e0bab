"""Formatter bases: ``LazyLLMFormatterBase`` with ``|`` composition, ``PipelineFormatter``,
``EmptyFormatter`` and ``FunctionCallFormatter`` (the contract's ``lazyllm.components.formatter``)."""

from __future__ import annotations

import copy
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class FormatterError(ValueError):
    """A selector or a model output that a formatter cannot handle."""


class package(tuple):
    """Several values passed on together (a formatter called with more than one argument gets one)."""


class LazyLLMFormatterBase:
    """A subclass gives ``_load`` (text to Python data) and ``_parse_py_data_by_formatter`` (select from it)."""

    def _load(self, msg: str) -> Any:
        return msg

    def _parse_py_data_by_formatter(self, py_data: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define _parse_py_data_by_formatter")

    def format(self, msg: Any) -> Any:
        if isinstance(msg, str):
            msg = self._load(msg)
        return self._parse_py_data_by_formatter(msg)

    def __call__(self, *msg: Any) -> Any:
        return self.format(msg[0] if len(msg) == 1 else package(msg))

    def __or__(self, other: Callable) -> "PipelineFormatter":
        if not callable(other):
            raise TypeError(f"cannot compose a formatter with {type(other).__name__}: it is not callable")
        return PipelineFormatter([self, other])

    def __repr__(self) -> str:
        return f"<fineflow.{type(self).__name__}>"


class PipelineFormatter(LazyLLMFormatterBase):
    """Runs formatters (or any callables) one after another; ``a | b | c`` builds one."""

    def __init__(self, formatter: Callable | Iterable[Callable]):
        steps = list(formatter) if isinstance(formatter, (list, tuple)) else [formatter]
        self._steps: list[Callable] = []
        for step in steps:
            if not callable(step):
                raise TypeError(f"PipelineFormatter steps must be callable, got {type(step).__name__}")
            self._steps.extend(step._steps if isinstance(step, PipelineFormatter) else [step])

    def format(self, msg: Any) -> Any:
        return self._parse_py_data_by_formatter(msg)

    def _parse_py_data_by_formatter(self, py_data: Any) -> Any:
        for step in self._steps:
            py_data = step(py_data)
        return py_data

    def __or__(self, other: Callable) -> "PipelineFormatter":
        return PipelineFormatter([*self._steps, other])


def _caller_level() -> int:
    """The ``stacklevel`` that makes a warning point at the code that called the formatter (``f(msg)``,
    ``f.format(msg)`` or a pipeline), whatever the path inside this package: the first frame outside it, counted
    from the function that warns."""
    level, frame = 2, sys._getframe(2)  # 0: here; 1: the function that warns; 2: its caller
    while frame is not None and frame.f_code.co_filename.startswith(PACKAGE_DIR):
        level, frame = level + 1, frame.f_back
    return level


def _is_message(msg: Any) -> bool:
    return isinstance(msg, dict) and ("content" in msg or "role" in msg)


class EmptyFormatter(LazyLLMFormatterBase):
    """Leaves text as it is; turns an assistant message dict into its text."""

    def _parse_py_data_by_formatter(self, msg: Any) -> Any:
        if not _is_message(msg):
            return msg
        if msg.get("tool_calls"):
            warnings.warn("EmptyFormatter drops the message's tool_calls; use FunctionCallFormatter to keep them",
                          UserWarning, stacklevel=_caller_level())
        content = msg.get("content") or ""
        reasoning = msg.get("reasoning_content")
        return f"<think>{reasoning}</think>{content}" if reasoning else content


class FunctionCallFormatter(LazyLLMFormatterBase):
    """Keeps a message's role, content, reasoning content and tool calls (without their stream ``index``)."""

    KEEP = ("role", "content", "reasoning_content", "tool_calls")

    def _parse_py_data_by_formatter(self, msg: Any) -> dict:
        if not isinstance(msg, dict):
            raise FormatterError(f"FunctionCallFormatter expects a message dict, got {type(msg).__name__}")
        out = {key: copy.deepcopy(msg[key]) for key in self.KEEP if key in msg}
        if "tool_calls" in out:
            out["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in out["tool_calls"]]
        return out
