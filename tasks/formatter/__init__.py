"""Formatters (the contract's ``lazyllm.components.formatter``): shape a model's output.

``make_formatter(name, selector)`` is how a pipeline config names one.
"""

from tasks.formatter.base import (EmptyFormatter, FormatterError, FunctionCallFormatter, LazyLLMFormatterBase,
                                  PipelineFormatter, package)
from tasks.formatter.files import (LAZYLLM_QUERY_PREFIX, FileFormatter, decode_query_with_filepaths,
                                   encode_query_with_filepaths, lazyllm_merge_query)
from tasks.formatter.selector import JsonLikeFormatter, PythonFormatter
from tasks.formatter.structured import JsonFormatter, YamlFormatter, extract_json

FORMATTERS = {"empty": EmptyFormatter, "json": JsonFormatter, "yaml": YamlFormatter, "python": PythonFormatter,
              "jsonlike": JsonLikeFormatter, "file": FileFormatter, "function_call": FunctionCallFormatter}


def make_formatter(name: str = "empty", selector: str | None = None) -> LazyLLMFormatterBase:
    """A formatter by name; ``selector`` is its argument (a selection, or FileFormatter's mode)."""
    if name not in FORMATTERS:
        raise FormatterError(f"unknown formatter {name!r}; known: {', '.join(FORMATTERS)}")
    cls = FORMATTERS[name]
    if selector and cls in (EmptyFormatter, FunctionCallFormatter):
        raise FormatterError(f"the {name!r} formatter takes no selector, got {selector!r}")
    return cls(selector) if selector else cls()


__all__ = ["LazyLLMFormatterBase", "JsonLikeFormatter", "PythonFormatter", "JsonFormatter", "YamlFormatter",
           "EmptyFormatter", "FunctionCallFormatter", "FileFormatter", "PipelineFormatter",
           "encode_query_with_filepaths", "decode_query_with_filepaths", "lazyllm_merge_query", "FormatterError",
           "LAZYLLM_QUERY_PREFIX", "FORMATTERS", "extract_json", "make_formatter", "package"]
