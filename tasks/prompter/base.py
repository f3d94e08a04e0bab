"""``LazyLLMPrompterBase`` and ``EmptyPrompter`` (the contract's ``lazyllm.components.prompter``).

A prompter holds two templates. The *instruction template* is what the user
wrote (plus an extra-keys block); its ``{slots}`` are filled from the input.
The *prompt template* is the model layout and is filled with the system prompt,
the filled instruction, tools, history and the remaining input. The exact
strings are in DESIGN.md ("Prompter facts").
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from typing import Any

from tasks.core import check_kwargs
from tasks.prompter.tools import FC_PROMPT, FC_PROMPT_PLACEHOLDER, TOOL_TOKENS, TOOLS_HEADER, dumps_json5, tool_result
from tasks.settings import env

log = logging.getLogger(__name__)

DEFAULT_SYSTEM = "You are an AI-Agent developed by LazyLLM."
EXTRA_KEYS_PREFIX = "Here are some extra messages you can referred to:\n\n"
MODEL_CONFIG_KEYS = ("system", "sos", "eos", "soh", "eoh", "soa", "eoa", "soe", "eoe",
                     "tool_start_token", "tool_end_token", "tool_args_token")
_SLOT = re.compile(r"\{(\w+)\}")
OUTPUT_FORMATS = ("openai",)
class PrompterError(ValueError):
    """The input, history or tools do not fit the prompter's templates."""


def default_system_prompt() -> str:
    return "" if env("LAZYLLM_DISABLE_SYSTEM_PROMPT").lower() in ("1", "true", "on") \
        else DEFAULT_SYSTEM


def instruction_slots(template: str) -> list[str]:
    """The ``{slots}`` of an instruction template, in order, without repeats."""
    return list(dict.fromkeys(_SLOT.findall(template)))


class LazyLLMPrompterBase:
    """Base of the LazyLLM-style prompters; subclasses call ``_init_prompt`` with their templates."""

    ISA = "<!lazyllm-spliter!>"
    ISE = "</!lazyllm-spliter!>"

    def __init__(self, show: bool = False, tools: list | None = None, history: list | None = None,
                 skills: str | None = None, enable_system: bool = True):
        self._configs = {key: "" for key in MODEL_CONFIG_KEYS}
        self._configs["system"] = default_system_prompt()
        self._show = show
        self._tools = tools
        self._skills = skills or ""
        self._enable_system = enable_system
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
    def _join_instruction(cls, instruction: str | dict | None, user_suffix: str = "") -> str:
        """A ``dict(system=..., user=...)`` instruction becomes one string with the user part (and
        ``user_suffix``) marked."""
        if instruction is None:
            return ""
        if isinstance(instruction, dict):
            check_kwargs(f"{cls.__name__} instruction", instruction, ("system", "user"))
            return instruction.get("system", "") + cls.ISA + instruction.get("user", "") + user_suffix + cls.ISE
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
    def _instruction_for(self, tools: list | None, for_messages: bool) -> str:
        """The instruction template for this call: with the function-call prompt when tools go into a text
        prompt, and the configured tool tokens (and ``{tool_names}``) filled in."""
        template = self._instruction_template
        fc_prompt = FC_PROMPT if tools and not for_messages else ""
        if fc_prompt and FC_PROMPT_PLACEHOLDER not in template:
            template = f"{template}\n\n{fc_prompt}"
        template = template.replace(FC_PROMPT_PLACEHOLDER, fc_prompt)
        for token in TOOL_TOKENS:  # an unset token stays a slot, which the input must then fill
            if self._configs[token] and token in template:
                template = template.replace(f"{{{token}}}", self._configs[token])
        if "tool_names" in template:
            names = dumps_json5([t["function"]["name"] for t in tools]) if tools else ""
            template = template.replace("{tool_names}", names)
        return template

    @staticmethod
    def _fill_instruction(template: str, input: Any) -> tuple[str, Any]:
        """Fill the instruction's slots from ``input``; return the instruction and what is left as input.

        A string (or integer) fills the single slot, or is the input when there is none; a dict fills the
        slots it names, and at most one other key's value is the input.
        """
        slots = instruction_slots(template)
        if isinstance(input, (str, int)):
            if len(slots) == 1:
                try:
                    return template.format(**{slots[0]: input}), ""
                except (IndexError, KeyError, ValueError) as e:
                    raise PrompterError(f"the instruction {template!r} is not a format string with one slot "
                                        f"{{{slots[0]}}}: {e!r}") from None
            if slots:
                raise PrompterError(f"the instruction has slots {slots}; pass a dict with those keys, not a string")
            return template, input
        if not isinstance(input, dict):
            raise PrompterError(f"input must be a str or a dict (filling the instruction's slots), "
                                f"got {type(input).__name__}")
        missing = [s for s in slots if s not in input]
        if missing:
            raise PrompterError(f"input lacks key(s) {missing}; the instruction's slots are {slots}")
        rest = {k: v for k, v in input.items() if k not in slots}
        if len(rest) > 1:
            raise PrompterError(f"unexpected input keys {sorted(rest)}: the slots are {slots}, and at most one "
                                "other key may be given as the input")
        for slot in slots:
            if not isinstance(input[slot], str):
                raise PrompterError(f"input[{slot!r}] fills a slot and must be a str, got {type(input[slot]).__name__}")
            template = template.replace(f"{{{slot}}}", input[slot])
        return template, (next(iter(rest.values())) if rest else "")

    def _split_instruction(self, instruction: str) -> tuple[str, str]:
        """A joined dict instruction -> (system part, user part); what follows the user part's end marker is
        not part of either."""
        start = instruction.find(self.ISA)
        end = instruction.rfind(self.ISE)
        if start < 0 or end < 0 or end < start:
            return instruction, ""
        return instruction[:start], instruction[start + len(self.ISA):end]

    def _history_messages(self, history: list | None) -> list[dict]:
        messages: list[dict] = []
        for i, item in enumerate(self._history + list(history or [])):
            if isinstance(item, list):
                if len(item) > 2:
                    raise PrompterError(f"history item {i} must be [user, assistant], got {len(item)} elements")
                messages += [{"role": role, "content": text} for role, text in zip(("user", "assistant"), item)]
            elif isinstance(item, dict):
                messages.append(item)
            else:
                raise PrompterError(f"history item {i} must be [user, assistant] or a message dict, got {item!r}")
        return messages

    def _history_text(self, history: list | None) -> str:
        c = self._configs

        def turn(user: Any, answer: Any) -> str:
            return f"{c['soh']}{user}{c['eoh']}{c['soa']}{answer}{c['eoa']}"

        def pair(item: Any) -> tuple:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise PrompterError(f"a history turn must be [user, assistant], got {item!r}")
            return tuple(item)

        out = "".join(turn(*pair(item)) for item in self._history)
        if not history:
            return out
        if isinstance(history[0], list):
            return out + "".join(turn(*pair(item)) for item in history)
        if not isinstance(history[0], dict):
            raise PrompterError(f"history must be [user, assistant] pairs or message dicts, got {history[0]!r}")
        for item in history:
            role = item["role"]
            if role == "user":
                out += f"{c['soh']}{item['content']}{c['eoh']}"
            elif role == "assistant":
                out += f"{c['soa']}{item.get('content', '')}{self._tool_calls_text(item)}{c['eoa']}"
            elif role == "tool":
                out += f"{c['soe']}{tool_result(item['content'])}{c['eoe']}"
        return out

    def _tool_calls_text(self, message: dict) -> str:
        c = self._configs
        out = []
        for call in message.get("tool_calls", []):
            fn = call["function"]
            text = (fn["name"] + c["tool_args_token"] + dumps_json5(fn["arguments"])
                    if c["tool_args_token"] else fn)
            out.append(f"{c['tool_start_token']}\n{text}{c['tool_end_token']}\n")
        return "".join(out)

    def _check_values(self, instruction: str, input: Any, history: Any, tools: Any) -> None:
        """Subclasses reject what their layout cannot hold."""

    # -- output ----------------------------------------------------------------------------------
    def _prompt_text(self, instruction: str, input: Any, user: str, history: str, tools: str,
                     label: str | None) -> str:
        c = self._configs
        if isinstance(input, dict):
            raise PrompterError(f"a text prompt has no place for a message dict as the input: {input!r}")
        params = dict(c, instruction=instruction, input=input, user=user, history=history, tools=tools,
                      skills=self._skills)
        return (self._template.format(**params) + (label or "")).lstrip("\n")

    def _prompt_messages(self, instruction: str, input: Any, user: str, history: list,
                         tools: list | None) -> dict[str, Any]:
        messages = list(history)
        if isinstance(input, str):
            messages.append({"role": "user", "content": input})
        elif isinstance(input, dict):
            messages.append(input)
        else:
            raise PrompterError(f"the input of a messages prompt must be a str or a message dict, got {input!r}")
        if user:
            messages[-1]["content"] = user + messages[-1]["content"]
        if self._enable_system:
            system = "\n".join(part for part in (self._configs["system"], instruction, self._skills) if part)
            messages.insert(0, {"role": "system", "content": system})
        return {"messages": messages, "tools": tools} if tools else {"messages": messages}

    def generate_prompt(self, input: str | dict | None = None, history: list | None = None,
                        tools: list | None = None, label: str | None = None, *, show: bool = False,
                        return_dict: bool = False, format: str | None = None) -> str | dict:
        """The prompt for ``input``: a string, or ``{'messages': [...]}`` with ``format='openai'``."""
        if format is not None and format not in OUTPUT_FORMATS:
            raise PrompterError(f"unknown format {format!r}; known: {', '.join(OUTPUT_FORMATS)}")
        if return_dict and format is None:
            format = "openai"
        input = copy.deepcopy(input)
        if self._pre_hook:
            input, history, tools, label = self._pre_hook(input, history, tools, label)
        tools = tools or self._tools
        as_messages = format == "openai"
        instruction, input = self._fill_instruction(self._instruction_for(tools, as_messages), input)
        history_part = self._history_messages(history) if as_messages else self._history_text(history)
        tools_part = tools if as_messages else (TOOLS_HEADER + dumps_json5(tools) + "\n\n" if tools else "")
        self._check_values(instruction, input, history_part, tools_part)
        instruction, user = self._split_instruction(instruction)
        result = (self._prompt_messages(instruction, input, user, history_part, tools_part) if as_messages
                  else self._prompt_text(instruction, input, user, history_part, tools_part, label))
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
