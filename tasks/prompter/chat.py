"""``ChatPrompter``: multi-turn chat with history, tools and the model's special tokens."""

from __future__ import annotations

from tasks.prompter.base import LazyLLMPrompterBase

CHAT_TEMPLATE = "{sos}{system}{instruction}{skills}{tools}{eos}\n\n{history}\n{soh}\n{user}{input}\n{eoh}{soa}\n"


class ChatPrompter(LazyLLMPrompterBase):
    def __init__(self, instruction: str | dict | None = None, extra_keys: list[str] | None = None,
                 show: bool = False, tools: list | None = None, skills: str | None = None,
                 history: list | None = None, *, enable_system: bool = True):
        super().__init__(show, tools=tools, history=history, skills=skills, enable_system=enable_system)
        extra = self._get_extro_key_template(extra_keys)
        if isinstance(instruction, dict):  # the extra-keys block belongs to the user part
            self._init_prompt(CHAT_TEMPLATE, self._join_instruction(instruction, extra) + "\n")
        else:  # no instruction: no instruction block at all (extra keys included)
            text = self._join_instruction(instruction)
            self._init_prompt(CHAT_TEMPLATE, f"{text}\n{extra}\n" if text else "")

    def _response_split(self) -> str | None:
        # The answer follows the assistant-start token and its newline, which set_model_configs may change.
        return f"{self._configs['soa']}\n" if self._configs["soa"] else None
