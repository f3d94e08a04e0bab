"""Prompters by name: what ``prompt_template_name`` in a pipeline config may say.

Training data, evaluation and the served endpoint all render prompts through
``render_record(get_prompter(name), record)``, so they never drift apart.
"""

from __future__ import annotations

from collections.abc import Callable

from tasks.prompter.alpaca import AlpacaPrompter
from tasks.prompter.base import LazyLLMPrompterBase
from tasks.prompter.chat import ChatPrompter
from tasks.prompter.prompter import TEMPLATES, Prompter

AnyPrompter = Prompter | LazyLLMPrompterBase

PROMPTERS: dict[str, Callable[[], AnyPrompter]] = {
    **{name: (lambda name=name: Prompter.from_template(name)) for name in TEMPLATES},
    # The record's instruction fills the instruction slot; its input goes to an extra-keys block.
    "lazyllm_alpaca": lambda: AlpacaPrompter("{instruction}", extra_keys=["input"]),
    "lazyllm_chat": lambda: ChatPrompter("{instruction}", extra_keys=["input"]),
}


def get_prompter(name: str) -> AnyPrompter:
    if name not in PROMPTERS:
        raise ValueError(f"unknown prompt template {name!r}; known: {', '.join(sorted(PROMPTERS))}")
    return PROMPTERS[name]()


def render_record(prompter: AnyPrompter, record: dict[str, str]) -> str:
    """The prompt for an alpaca record (``instruction`` and optional ``input``), without its output."""
    return prompter.generate_prompt({"instruction": record["instruction"], "input": record.get("input", "")})
