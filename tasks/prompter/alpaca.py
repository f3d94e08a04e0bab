"""``AlpacaPrompter``: the alpaca layout with tools and no chat history."""

from __future__ import annotations

from typing import Any

from tasks.prompter.base import LazyLLMPrompterBase, PrompterError

ALPACA_PREFIX = ("Below is an instruction that describes a task, paired with extra messages such as input that "
                 "provides further context if possible. Write a response that appropriately completes the "
                 "request.\n\n### Instruction:\n")
ALPACA_TEMPLATE = "{system}\n{instruction}\n{tools}\n{user}### Response:\n"
ALPACA_SPLIT = "### Response:\n"


class AlpacaPrompter(LazyLLMPrompterBase):
    def __init__(self, instruction: str | dict | None = None, extra_keys: list[str] | None = None,
                 show: bool = False, tools: list | None = None):
        super().__init__(show, tools=tools)
        extra = self._get_extro_key_template(extra_keys)
        if isinstance(instruction, dict):  # the extra-keys block belongs to the user part
            body = self._join_instruction(instruction, ("\n\n" + extra) if extra else "")
        else:
            body = self._join_instruction(instruction) + "\n\n" + extra
        self._init_prompt(ALPACA_TEMPLATE, ALPACA_PREFIX + body, ALPACA_SPLIT)

    def _check_values(self, instruction: str, input: Any, history: Any, tools: Any) -> None:
        if history:
            raise PrompterError("AlpacaPrompter does not support chat history; use ChatPrompter")
        if input:
            raise PrompterError(f"AlpacaPrompter has no place for the input {input!r}: every input key must "
                                "be a slot of the instruction or one of extra_keys")
