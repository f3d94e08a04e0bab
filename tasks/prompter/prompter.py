"""``Prompter``: a plain template prompter (the contract's ``lazyllm.components.Prompter``).

Training data is rendered through ``Prompter.from_template(prompt_template_name)``,
and evaluation and serving use the same prompter, so the prompts never drift apart.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

TEMPLATES: dict[str, dict[str, str]] = {
    # alpaca-lora's template, which AlpacaloraFinetune's prompt_template_name='alpaca' names.
    "alpaca": {
        "prompt": "Below is an instruction that describes a task, paired with an input that provides further "
                  "context. Write a response that appropriately completes the request.\n\n"
                  "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "response_split": "### Response:",
    },
    "alpaca_short": {
        "prompt": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "response_split": "### Response:",
    },
}


def template_slots(template: str) -> list[str]:
    """The ``{names}`` a format string fills, in order, without repeats."""
    return list(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(template) if name))


class Prompter:
    def __init__(self, prompt: str | None = None, response_split: str | None = None,
                 chat_prompt: str | None = None, history_symbol: str = "llm_chat_history",
                 eoa: str | None = None, eoh: str | None = None, show: bool = False):
        self._prompt = prompt or ""
        self._response_split = response_split
        self._chat_prompt = chat_prompt
        self._history_symbol = history_symbol
        self._eoa = eoa or ""
        self._eoh = eoh or ""
        self._show = show
        if chat_prompt is not None and history_symbol not in template_slots(chat_prompt):
            raise ValueError(f"chat_prompt must contain the history slot {{{history_symbol}}}")

    @classmethod
    def from_dict(cls, prompt: dict[str, Any], *, show: bool = False) -> "Prompter":
        if "prompt" not in prompt:
            raise ValueError(f"a prompter dict needs a 'prompt' key; got keys {sorted(prompt)}")
        return cls(**prompt, show=show)

    @classmethod
    def from_template(cls, template_name: str, *, show: bool = False) -> "Prompter":
        if template_name not in TEMPLATES:
            raise ValueError(f"unknown prompt template {template_name!r}; known: {', '.join(sorted(TEMPLATES))}")
        return cls.from_dict(TEMPLATES[template_name], show=show)

    @classmethod
    def from_file(cls, fname: str | Path, *, show: bool = False) -> "Prompter":
        return cls.from_dict(json.loads(Path(fname).read_text(encoding="utf-8")), show=show)

    @classmethod
    def empty(cls) -> "Prompter":
        return cls()

    @property
    def slots(self) -> list[str]:
        return template_slots(self._prompt)

    def generate_prompt(self, input: str | dict, history: list[list[str]] | None = None, tools: Any = None,
                        label: str | None = None, show: bool = False) -> str:
        if tools is not None:
            raise NotImplementedError("Prompter does not support tools; use ChatPrompter")
        template = self._chat_prompt if history and self._chat_prompt else self._prompt
        if not template:
            prompt = input if isinstance(input, str) else json.dumps(input, ensure_ascii=False)
        else:
            slots = [s for s in template_slots(template) if s != self._history_symbol]
            if isinstance(input, str):
                if len(slots) != 1:
                    raise ValueError(f"a string input needs a template with exactly one slot; this one has {slots}")
                values: dict[str, Any] = {slots[0]: input}
            else:
                missing = [s for s in slots if s not in input]
                if missing:
                    raise KeyError(f"prompt input lacks field(s) {missing}; the template needs {slots}")
                values = dict(input)
            if self._history_symbol in template_slots(template):
                values[self._history_symbol] = self._eoa.join(self._eoh.join(turn) for turn in (history or []))
            prompt = template.format(**values)
        if label:
            prompt += label
        if show or self._show:
            print(prompt)
        return prompt

    def get_response(self, response: str, input: str | None = None) -> str:
        if input and response.startswith(input):
            response = response[len(input):]
        if self._response_split and self._response_split in response:
            response = response.split(self._response_split)[-1]
        return response.strip()
