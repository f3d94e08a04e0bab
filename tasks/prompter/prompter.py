"""``Prompter``: a plain template prompter (the contract's ``lazyllm.components.Prompter``).

Training data is rendered through ``Prompter.from_template(prompt_template_name)``,
and evaluation and serving use the same prompter, so the prompts never drift apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.prompter.base import PrompterError

_SLOT = re.compile(r"\{(\w+)\}")

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


class Prompter:
    """A plain template: ``prompt`` is a format string; with ``chat_prompt`` (or a ``{history_symbol}`` slot in
    ``prompt``) history turns are joined into that slot (each turn's parts by ``eoh``, turns by ``eoa``)."""

    def __init__(self, prompt: str | None = None, response_split: str | None = None, *,
                 chat_prompt: str | None = None, history_symbol: str = "llm_chat_history",
                 eoa: str | None = None, eoh: str | None = None, show: bool = False):
        self._prompt = prompt
        self._response_split = response_split
        self._chat_prompt = chat_prompt
        self._history_symbol = history_symbol
        self._eoa, self._eoh = eoa, eoh
        self._show = show
        keys = set(_SLOT.findall(prompt)) if prompt else set()
        if chat_prompt is not None:
            chat_keys = set(_SLOT.findall(chat_prompt))
            if not keys <= chat_keys or chat_keys - keys != {history_symbol}:
                raise ValueError(f"chat_prompt must have the prompt's slots {sorted(keys)} plus exactly the history "
                                 f"slot {{{history_symbol}}}; it has {sorted(chat_keys)}")
            self.use_history = True
        else:
            self.use_history = history_symbol in keys
            if self.use_history:
                keys.discard(history_symbol)
                self._chat_prompt = prompt
        self._keys = sorted(keys)

    @classmethod
    def from_dict(cls, prompt: dict[str, Any], *, show: bool = False) -> "Prompter":
        if not isinstance(prompt, dict):
            raise PrompterError(f"a prompter dict is expected, got {type(prompt).__name__}")
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

    def generate_prompt(self, input: Any, history: list[list[str]] | None = None, tools: Any = None,
                        label: str | None = None, show: bool = False) -> Any:
        """``input`` (a dict of slot values, or the value of the single slot) formatted into the template, then
        ``label``. An empty prompter returns ``input`` unchanged."""
        if self._prompt is not None:
            if tools is not None:
                raise PrompterError("Prompter does not support tools; use ChatPrompter")
            if not isinstance(input, Mapping):
                if len(self._keys) != 1:
                    raise PrompterError(f"a non-dict input needs a template with exactly one slot; {self._prompt!r} "
                                        f"has {self._keys}")
                input = {self._keys[0]: input}
            values = dict(input)
            try:
                if self.use_history and isinstance(history, list) and history:
                    if not isinstance(history[0], list):
                        raise PrompterError("history must be a list of [user, assistant] lists")
                    values[self._history_symbol] = self._eoa.join(self._eoh.join(turn) for turn in history)
                    input = self._chat_prompt.format(**values)
                else:
                    if self.use_history:
                        values[self._history_symbol] = ""
                    input = self._prompt.format(**values)
            except Exception as e:  # noqa: BLE001 (every failure to fill the template is the same error)
                raise PrompterError(f"cannot fill the prompt {self._prompt!r} (chat prompt {self._chat_prompt!r}) "
                                    f"with input {input!r} and history {history!r}: {e!r}") from None
            if label:
                input += label
        if show or self._show:
            print(input)
        return input

    def get_response(self, response: str, input: str | None = None) -> str:
        """The answer: ``response`` without an echoed ``input``, else the text after the response split."""
        if input and response.startswith(input):
            return response[len(input):]
        return response if self._response_split is None else response.split(self._response_split)[-1]
