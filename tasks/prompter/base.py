"""``LazyLLMPrompterBase`` and ``EmptyPrompter`` (the contract's ``lazyllm.components.prompter``).

A prompter holds two templates. The *instruction template* is what the user
wrote (plus an extra-keys block); its ``{slots}`` are filled from the input.
The *prompt template* is the model layout and is filled with the system prompt,
the filled instruction, tools, history and the remaining input. The exact
strings are in DESIGN.md ("Prompter facts").
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any

from tasks.core import check_kwargs

log = logging.getLogger(__name__)

DEFAULT_SYSTEM = "You are an AI-Agent developed by LazyLLM."
EXTRA_KEYS_PREFIX = "Here are some extra messages you can referred to:\n\n"
TOOLS_HEADER = "### Function-call Tools. \n\n"
MODEL_CONFIG_KEYS = ("system", "sos", "eos", "soh", "eoh", "soa", "eoa", "soe", "eoe",
                     "tool_start_token", "tool_end_token", "tool_args_token")
# Tool tokens may appear as placeholders in an instruction; they are not input slots.
_TOOL_TOKENS = ("tool_start_token", "tool_end_token", "tool_args_token")
_SLOT = re.compile(r"\{(\w+)\}")
OUTPUT_FORMATS = ("openai",)


class PrompterError(ValueError):
    """The input, history or tools do not fit the prompter's templates."""


def default_system_prompt() -> str:
    return "" if os.environ.get("LAZYLLM_DISABLE_SYSTEM_PROMPT", "").lower() in ("1", "true", "on") \
        else DEFAULT_SYSTEM


def instruction_slots(template: str) -> list[str]:
    """The ``{slots}`` of an instruction template, in order, without repeats or tool tokens."""
    return [s for s in dict.fromkeys(_SLOT.findall(template)) if s not in _TOOL_TOKENS]


class LazyLLMPrompterBase:
    """Base of the LazyLLM-style prompters; subclasses call ``_init_prompt`` with their templates."""

    ISA = "<!lazyllm-spliter!>"
    ISE = "</!lazyllm-spliter!>"

    def __init__(self, show: bool = False, tools: list | None = None, history: list | None = None):
        self._configs = {key: "" for key in MODEL_CONFIG_KEYS}
        self._configs["system"] = default_system_prompt()
        self._show = show
        self._tools = tools
        self._history = list(history or [])
        self._pre_hook: Callable | None = None
        self._template = "{instruction}{input}"
        self._instruction_template = ""
        self._split: str | None = None

    # -- configuration ---------------------------------------------------------------------------
    def _init_prompt(self, template: str, instruction_template: str, split: str | None = None) -> None:
        self._template = template
        self._instruction_template = instruction_template
        self._split = split

    @staticmethod
    def _get_extro_key_template(extra_keys: str | list[str] | tuple[str, ...] | None,
                                prefix: str = EXTRA_KEYS_PREFIX) -> str:
        """The block that lists ``extra_keys`` as slots, appended to the instruction."""
        if not extra_keys:
            return ""
        if isinstance(extra_keys, str):
            extra_keys = [extra_keys]
        if not isinstance(extra_keys, (list, tuple)) or not all(isinstance(k, str) for k in extra_keys):
            raise PrompterError(f"extra_keys must be a str or a list of str, got {extra_keys!r}")
        return prefix + "".join(f"### {k}:\n{{{k}}}\n\n" for k in extra_keys)

    @classmethod
    def _join_instruction(cls, instruction: str | dict | None) -> str:
        """A ``dict(system=..., user=...)`` instruction becomes one string with the user part marked."""
        if instruction is None:
            return ""
        if isinstance(instruction, dict):
            check_kwargs(f"{cls.__name__} instruction", instruction, ("system", "user"))
            return instruction.get("system", "") + cls.ISA + instruction.get("user", "") + cls.ISE
        if not isinstance(instruction, str):
            raise PrompterError(f"instruction must be a str or dict(system=..., user=...), got {type(instruction)}")
        return instruction

    def set_model_configs(self, **configs: str) -> "LazyLLMPrompterBase":
        """Set the model's special tokens and system prompt (``system``, ``sos``/``eos``, ...); ``None`` keeps one."""
        check_kwargs(f"{type(self).__name__}.set_model_configs", configs, MODEL_CONFIG_KEYS)
        self._configs.update({k: v for k, v in configs.items() if v is not None})
        return self

    _set_model_configs = set_model_configs  # the contract's name for it

    @property
    def model_configs(self) -> dict[str, str]:
        return dict(self._configs)

    def pre_hook(self, func: Callable | None = None) -> "LazyLLMPrompterBase":
        """``func(input, history, tools, label)`` returns the four, changed, before a prompt is built."""
        self._pre_hook = func
        return self

    # -- the pieces of a prompt ------------------------------------------------------------------
    def _fill_instruction(self, input: Any) -> tuple[str, Any]:
        """Fill the instruction's slots from ``input``; return the instruction and what is left as input."""
        template = self._instruction_template
        for token in _TOOL_TOKENS:
            template = template.replace(f"{{{token}}}", self._configs[token])
        slots = instruction_slots(template)
        if input is None:
            input = ""
        if isinstance(input, (str, int, float)) and not isinstance(input, bool):
            if len(slots) == 1:
                return template.replace(f"{{{slots[0]}}}", str(input)), ""
            if slots:
                raise PrompterError(f"the instruction has slots {slots}; pass a dict with those keys, not a string")
            return template, str(input)
        if isinstance(input, list):
            if slots:
                raise PrompterError(f"the instruction has slots {slots}; a list of messages cannot fill them")
            return template, input
        if not isinstance(input, dict):
            raise PrompterError(f"input must be a str, a dict or a list of messages, got {type(input).__name__}")
        missing = [s for s in slots if s not in input]
        if missing:
            raise PrompterError(f"input lacks key(s) {missing}; the instruction's slots are {slots}")
        rest = {k: v for k, v in input.items() if k not in slots}
        if len(rest) > 1:
            raise PrompterError(f"unexpected input keys {sorted(rest)}: the slots are {slots}, and at most one "
                                "other key may be given as the input")
        for slot in slots:
            template = template.replace(f"{{{slot}}}", str(input[slot]))
        return template, (str(next(iter(rest.values()))) if rest else "")

    def _split_instruction(self, instruction: str) -> tuple[str, str]:
        """Split a joined dict instruction into (system part, user part); text after the user part stays
        with the system part, so an extra-keys block is never lost."""
        start, end = instruction.find(self.ISA), instruction.rfind(self.ISE)
        if start < 0 or end < start:
            return instruction, ""
        return instruction[:start] + instruction[end + len(self.ISE):], instruction[start + len(self.ISA):end]

    def _all_history(self, history: list | None) -> list:
        history = self._history + list(history or [])
        for i, item in enumerate(history):
            if isinstance(item, (list, tuple)):
                if not 1 <= len(item) <= 2:
                    raise PrompterError(f"history item {i} must be [user, assistant], got {len(item)} elements")
            elif not (isinstance(item, dict) and "role" in item):
                raise PrompterError(f"history item {i} must be [user, assistant] or a message dict with a "
                                    f"'role', got {item!r}")
        return history

    def _history_text(self, history: list) -> str:
        c = self._configs
        out = []
        for item in history:
            if isinstance(item, (list, tuple)):
                user, answer = (list(item) + [""])[:2]
                out.append(f"{c['soh']}{user}{c['eoh']}{c['soa']}{answer}{c['eoa']}")
            elif item["role"] == "user":
                out.append(f"{c['soh']}{item.get('content', '')}{c['eoh']}")
            elif item["role"] == "assistant":
                out.append(f"{c['soa']}{item.get('content') or ''}{self._tool_calls_text(item)}{c['eoa']}")
            elif item["role"] == "tool":
                out.append(f"{c['soe']}{item.get('content', '')}{c['eoe']}")
            else:
                out.append(f"{c['sos']}{item.get('content', '')}{c['eos']}")
        return "".join(out)

    def _tool_calls_text(self, message: dict) -> str:
        c = self._configs
        out = []
        for call in message.get("tool_calls") or []:
            fn = call["function"]
            text = (fn["name"] + c["tool_args_token"] + json.dumps(fn.get("arguments"), ensure_ascii=False)
                    if c["tool_args_token"] else json.dumps(fn, ensure_ascii=False))
            out.append(f"{c['tool_start_token']}\n{text}{c['tool_end_token']}\n")
        return "".join(out)

    @staticmethod
    def _history_messages(history: list) -> list[dict]:
        messages: list[dict] = []
        for item in history:
            if isinstance(item, dict):
                messages.append(dict(item))
            else:
                messages.append({"role": "user", "content": item[0]})
                if len(item) > 1:
                    messages.append({"role": "assistant", "content": item[1]})
        return messages

    def _resolve_tools(self, tools: list | None) -> list | None:
        if self._tools and tools:
            raise PrompterError("tools were given to the constructor and to generate_prompt; give them once")
        return self._tools or tools or None

    def _check_values(self, instruction: str, input: Any, history: list, tools: list | None) -> None:
        """Subclasses reject what their layout cannot hold."""

    # -- output ----------------------------------------------------------------------------------
    def _prompt_text(self, instruction: str, input: Any, user: str, history: list, tools: list | None,
                     label: str | None) -> str:
        c = self._configs
        soh, eoh = c["soh"], c["eoh"]
        if isinstance(input, list):  # messages: a tool result is wrapped in the tool-output tokens
            if any(m.get("role") == "tool" for m in input):
                soh, eoh = c["soe"], c["eoe"]
            input = "\n".join(str(m.get("content", "")) for m in input)
        tools_text = TOOLS_HEADER + json.dumps(tools, ensure_ascii=False) + "\n\n" if tools else ""
        params = dict(c, instruction=instruction, input=input, user=user, history=self._history_text(history),
                      tools=tools_text, soh=soh, eoh=eoh)
        return self._template.format(**params) + (label or "")

    def _prompt_messages(self, instruction: str, input: Any, user: str, history: list,
                         tools: list | None) -> dict[str, Any]:
        messages = self._history_messages(history)
        if isinstance(input, list):
            messages.extend(dict(m) for m in input)
        else:
            messages.append({"role": "user", "content": input})
        if user:
            messages[-1]["content"] = user + (messages[-1].get("content") or "")
        system = "\n".join(part for part in (self._configs["system"], instruction) if part)
        messages.insert(0, {"role": "system", "content": system})
        return {"messages": messages, "tools": tools} if tools else {"messages": messages}

    def generate_prompt(self, input: str | dict | list | None = None, history: list | None = None,
                        tools: list | None = None, label: str | None = None, *, show: bool = False,
                        return_dict: bool = False, format: str | None = None) -> str | dict:
        """The prompt for ``input``: a string, or ``{'messages': [...]}`` with ``format='openai'``."""
        if format is not None and format not in OUTPUT_FORMATS:
            raise PrompterError(f"unknown format {format!r}; known: {', '.join(OUTPUT_FORMATS)}")
        as_messages = return_dict or format == "openai"
        input, history, tools = copy.deepcopy(input), copy.deepcopy(history), copy.deepcopy(tools)
        if self._pre_hook:
            input, history, tools, label = self._pre_hook(input, history, tools, label)
        instruction, input = self._fill_instruction(input)
        history = self._all_history(history)
        tools = self._resolve_tools(tools)
        self._check_values(instruction, input, history, tools)
        instruction, user = self._split_instruction(instruction)
        result = (self._prompt_messages(instruction, input, user, history, tools) if as_messages
                  else self._prompt_text(instruction, input, user, history, tools, label))
        if show or self._show:
            log.info("prompt: %r", result)
        return result

    def get_response(self, output: str, input: str | None = None) -> str:
        """The model's answer: ``output`` without the echoed ``input``, or the text after the response split."""
        if input and output.startswith(input):
            return output[len(input):]
        split = self._response_split()
        return output.split(split)[-1] if split else output

    def _response_split(self) -> str | None:
        return self._split


class EmptyPrompter(LazyLLMPrompterBase):
    """Returns the input unchanged, whatever else is passed."""

    def generate_prompt(self, input: Any = None, history: list | None = None, tools: list | None = None,
                        label: str | None = None, show: bool = False, return_dict: bool = False,
                        format: str | None = None) -> Any:
        if show or self._show:
            log.info("prompt: %r", input)
        return input
