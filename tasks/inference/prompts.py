"""Prompt styles: how a record becomes the text a model sees (a prompter's layout, or the tokenizer's chat
template), the same when the model is trained, evaluated and served."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.prompter import get_prompter, render_record

CHAT_TEMPLATE = "chat_template"


def check_style(style: str) -> str:
    """``style`` if it is a prompt style (a prompter's name or ``chat_template``); else a ValueError naming them."""
    if style != CHAT_TEMPLATE:
        try:
            get_prompter(style)
        except ValueError as e:
            raise ValueError(f"{e}; or {CHAT_TEMPLATE} (the model's own)") from None
    return style


def example(record: dict[str, Any]) -> dict[str, str]:
    """One evaluation example (``instruction``, ``input``, ``output``, ``system``) from a record of any chat
    format: alpaca, preference (the chosen answer), sharegpt and OpenAI messages (the last exchange)."""
    if "instruction" in record:
        output = record.get("output", record.get("chosen", ""))
        return {"instruction": record["instruction"], "input": record.get("input") or "", "output": output,
                "system": record.get("system") or ""}
    turns = record.get("conversations") or record.get("messages") or []
    role = lambda t: t.get("from", t.get("role"))  # noqa: E731
    text = lambda t: t.get("value", t.get("content")) or ""  # noqa: E731
    users = [i for i, t in enumerate(turns) if role(t) in ("human", "user")]
    if not users:
        raise ValueError(f"record has no user turn to evaluate: {sorted(record)}")
    last = users[-1]
    answer = next((text(t) for t in turns[last + 1:] if role(t) in ("gpt", "assistant")), "")
    system = record.get("system") or next((text(t) for t in turns if role(t) == "system"), "")
    return {"instruction": text(turns[last]), "input": "", "output": answer, "system": system}


def messages(record: dict[str, str]) -> list[dict[str, str]]:
    """Chat messages for a record, joined the way LLaMA-Factory joins alpaca columns (instruction, newline, input)."""
    ex = example(record)
    user = "\n".join(part for part in (ex["instruction"], ex["input"]) if part)
    return ([{"role": "system", "content": ex["system"]}] if ex["system"] else []) + [{"role": "user", "content": user}]


def render_prompt(style: str, record: dict[str, Any], tokenizer=None) -> str:
    """The prompt text for ``record`` in ``style`` (without BOS; ``model_text`` adds it where the style wants)."""
    if style == CHAT_TEMPLATE:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt style 'chat_template' needs a tokenizer that has a chat template")
        return tokenizer.apply_chat_template(messages(record), tokenize=False, add_generation_prompt=True)
    return prompter_prompt(get_prompter(style), record)


def prompter_prompt(prompter, record: dict[str, Any]) -> str:
    """The prompt a prompter lays out for ``record``."""
    ex = example(record)  # a plain template has no system slot: the system text leads the instruction
    return render_record(prompter, {"instruction": "\n".join(filter(None, [ex["system"], ex["instruction"]])),
                                    "input": ex["input"]})


def load_tokenizer(path: str):
    """The model's tokenizer, left-padded for batched generation (a GGUF file's own, given its path)."""
    from transformers import AutoTokenizer

    where = {"pretrained_model_name_or_path": str(Path(path).parent), "gguf_file": Path(path).name} \
        if str(path).endswith(".gguf") else {"pretrained_model_name_or_path": path}
    tokenizer = AutoTokenizer.from_pretrained(**where, padding_side="left", truncation_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def renderer(style: str, model_path: str | None = None) -> Callable[[dict[str, Any]], str]:
    """The prompt of a record in ``style``: a prompter's layout, or the chat template of the tokenizer in
    ``model_path`` (loaded once)."""
    if style != CHAT_TEMPLATE:
        prompter = get_prompter(style)
        return lambda record: prompter_prompt(prompter, record)
    if not model_path:
        raise ValueError("prompt style 'chat_template' needs the model whose tokenizer holds the template")
    tokenizer = load_tokenizer(model_path)
    return lambda record: render_prompt(style, record, tokenizer)


def render_prompts(style: str, records: list[dict[str, Any]], model_path: str) -> list[str]:
    """Prompts for ``records`` in ``style``; a chat template is read from the tokenizer in ``model_path``."""
    return list(map(renderer(style, model_path), records))


def model_text(tokenizer, style: str, prompt: str) -> str:
    """What is tokenized for a prompt: prompter styles train with BOS in front; chat templates carry their own."""
    return prompt if style == CHAT_TEMPLATE else (tokenizer.bos_token or "") + prompt


MARK = "\x00fineflow-user\x00"


def chat_template(style: str, tokenizer) -> str:
    """A Jinja chat template that renders messages as ``render_prompt(style, ...)`` and ``model_text`` do (the
    system text and the last user message, BOS in front), for servers that render chats themselves (vLLM).
    The template is checked against ``render_prompt`` before it is returned."""
    if style == CHAT_TEMPLATE:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt style 'chat_template' needs a tokenizer that has a chat template")
        return tokenizer.chat_template
    head, mark, tail = render_prompt(style, {"messages": [{"role": "user", "content": MARK}]}).partition(MARK)
    if not mark or "endraw" in head + tail:
        raise ValueError(f"prompt style {style!r} does not place the user message as plain text")
    template = ('{%- set ns = namespace(system="", user="") -%}'
                '{%- for m in messages -%}'
                '{%- if m["role"] == "system" -%}{%- set ns.system = m["content"] -%}'
                '{%- elif m["role"] == "user" -%}{%- set ns.user = m["content"] -%}{%- endif -%}'
                '{%- endfor -%}'
                f'{{{{ bos_token }}}}{{% raw %}}{head}{{% endraw %}}'
                '{{ ns.system ~ "\\n" ~ ns.user if ns.system else ns.user }}'
                f'{{% raw %}}{tail}{{% endraw %}}')
    probe = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"},
             {"role": "assistant", "content": "1"}, {"role": "user", "content": "two\nthree"}]
    import jinja2

    got = jinja2.Environment().from_string(template).render(messages=probe, bos_token=tokenizer.bos_token or "")
    if got != model_text(tokenizer, style, render_prompt(style, {"messages": probe})):
        raise ValueError(f"prompt style {style!r} cannot be written as a chat template: it changes the message")
    return template
