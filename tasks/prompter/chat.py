"""``ChatPrompter``: multi-turn chat with history, tools and the model's special tokens."""

from __future__ import annotations

from tasks.prompter.base import LazyLLMPrompterBase

CHAT_TEMPLATE = "{sos}{system}{instruction}{tools}{eos}\n\n{history}\n{soh}\n{user}{input}\n{eoh}{soa}\n"


class ChatPrompter(LazyLLMPrompterBase):
    def __init__(self, instruction: str | dict | None = None, extra_keys: list[str] | None = None,
                 show: bool = False, tools: list | None = None, history: list | None = None):
        super().__init__(show, tools=tools, history=history)
        instruction = self._join_instruction(instruction)
        self._init_prompt(CHAT_TEMPLATE, f"{instruction}\n{self._get_extro_key_template(extra_keys)}\n")

    def _response_split(self) -> str | None:
        # The answer follows the assistant-start token, which set_model_configs may change.
        return self._configs["soa"] or None
