"""Calls for the differential test against the reference package (``tests/component/test_reference_diff.py``).

The same file runs on both sides: imported by the test (fineflow's classes), and run as a
script by the reference package's own interpreter (``lazyllm.components``):

    <oracle-python> tests/support/reference_calls.py cases.json outcomes.json

Each outcome is ``{"ok": result}`` or ``{"error": exception type}``; the test compares results
exactly and errors by their presence (fineflow raises its own, clearer, exception types).
"""

from __future__ import annotations

import itertools
import json
import sys

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
INSTRUCTIONS = ["Answer the question: {instruction}", "You are a helpful assistant.", "", None,
                "Join {a} and {b}.", {"system": "You translate.", "user": "Translate: {instruction}"},
                {"system": "System only."}, {"user": "User only {instruction}"},
                {"system": "Sys {a}", "user": "Use {b}"}]
EXTRA_KEYS = [None, "context", ["context", "source"]]
INPUTS = ["What is 2+2?", "", None, {"instruction": "hi"}, {"instruction": "hi", "context": "c1"},
          {"instruction": "hi", "context": "c1", "source": "s1"}, {"a": "x", "b": "y"},
          {"a": "x", "b": "y", "context": "c1"}, {"input": "free", "instruction": "hi"}]
HISTORIES = [None, [["hello", "hi there"]], [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}],
             [{"role": "user", "content": "weather?"},
              {"role": "assistant", "content": "", "tool_calls": [
                  {"function": {"name": "get_weather", "arguments": {"city": "北京", "class": 1}}}]},
              {"role": "tool", "content": '{"temp": 20}'}, {"role": "tool", "content": "sunny"}]]
FORMATS = [{}, {"format": "openai"}, {"return_dict": True}]
# A model's special tokens (set_model_configs); with the tool tokens set, tools fit a text prompt.
CONFIGS = [None, {"soh": "<h>", "eoh": "</h>", "soa": "<a>", "eoa": "</a>", "soe": "<t>", "eoe": "</t>",
                  "tool_start_token": "<call>", "tool_end_token": "</call>", "tool_args_token": "=>"}]


def prompter_cases() -> list[dict]:
    """Every combination of class, instruction, extra keys, input, history, tools and output format."""
    out = []
    for cls, instruction, extra, inp, history, tools, fmt, configs in itertools.product(
            ["AlpacaPrompter", "ChatPrompter"], INSTRUCTIONS, EXTRA_KEYS, INPUTS, HISTORIES, [None, TOOLS], FORMATS,
            CONFIGS):
        out.append({"kind": "prompter", "cls": cls, "instruction": instruction, "extra_keys": extra, "input": inp,
                    "history": history, "tools": tools, "fmt": fmt, "configs": configs})
    return out


PLAIN = [{"prompt": "Q: {instruction}\nA:", "response_split": "A:"},
         {"prompt": "{instruction} / {input}", "response_split": None},
         {"prompt": "No slots at all."},
         {"prompt": "{llm_chat_history}User: {instruction}\nBot:", "eoa": "\n", "eoh": " => "},
         {"prompt": "User: {instruction}\nBot:", "chat_prompt": "{llm_chat_history}User: {instruction}\nBot:",
          "eoa": "|", "eoh": ":"},
         {"prompt": "User: {instruction}", "chat_prompt": "{instruction}{other}"},
         {"template": "alpaca"}, {}]


def more_cases() -> list[dict]:
    """Plain ``Prompter`` templates, ``EmptyPrompter``, ``get_response``, labels, integer input, tools and history
    given to the constructor, skills, and the system prompt switched off."""
    out = []
    for spec, inp, history, label, tools in itertools.product(
            PLAIN, ["hi", 7, {"instruction": "hi"}, {"instruction": "hi", "input": "x"}, {"other": 1}],
            [None, [["u", "a"], ["u2", "a2"]], [{"role": "user", "content": "u"}]], [None, "LABEL"], [None, TOOLS]):
        out.append({"kind": "plain", "spec": spec, "input": inp, "history": history, "label": label, "tools": tools})
    for cls, inp, label in itertools.product(["AlpacaPrompter", "ChatPrompter", "EmptyPrompter"],
                                             ["hi", 3, {"instruction": "hi"}, None], [None, "LABEL"]):
        out.append({"kind": "labelled", "cls": cls, "input": inp, "label": label})
    for cls, output, inp in itertools.product(
            ["AlpacaPrompter", "ChatPrompter", "plain"], ["x ### Response:\nanswer", "<a>\nanswer", "PROMPT answer",
                                                         "A: yes A: no"], [None, "PROMPT"]):
        out.append({"kind": "response", "cls": cls, "output": output, "input": inp})
    for ctor_tools, call_tools, skills, enable_system, ctor_history, fmt in itertools.product(
            [None, TOOLS], [None, TOOLS[:1]], [None, "Use the skills."], [True, False], [None, [["c0", "a0"]]],
            FORMATS):
        out.append({"kind": "chat_options", "ctor_tools": ctor_tools, "call_tools": call_tools, "skills": skills,
                    "enable_system": enable_system, "ctor_history": ctor_history, "fmt": fmt})
    return out


JSON_TEXTS = ['{"title": "A", "n": 1, "tags": ["x", "y"]}', '[{"title": "A"}, {"title": "B"}, {"title": "C"}]',
              'Here you go: {"answer": "yes", "why": {"k": 2}} done', 'Two: {"a": 1} and {"a": 2}',
              '```json\n[1, 2, 3]\n```', '{"broken": "value",', "no json here", "", '"just a string"',
              '[{"a": 1, "b": [1, 2]}, {"a": 2, "b": []}]']
SELECTORS = [None, "", "[0]", "[-1]", "[:]", "[1:]", "[0:2]", "[title]", "[:][title]", "[a,b]", "[:][a]", "[answer]",
             "[why][k]", "[tags][1]", "[0][b][0]"]
YAML_TEXTS = ["title: A\nn: 1\n", "- a: 1\n- a: 2\n", "```yaml\nanswer: yes\n```", "plain text", "", "a: [1, 2]"]
MODEL_NAMES = ["bge-large-zh-v1.5", "bge-reranker-large", "bge-m3", "internlm2-chat-7b", "Qwen2.5-7B-Instruct",
               "Qwen2-VL-7B-Instruct", "stable-diffusion-3-medium", "ChatTTS", "bark", "musicgen-small",
               "SenseVoiceSmall", "whisper-large-v3", "all-MiniLM-L6-v2", "gte-large", "jina-embeddings-v2-base-zh",
               "llava-1.5-7b-hf", "glm-4v-9b", "deepseek-coder-6.7b", "InternVL2-8B", "m3e-base", "text2vec-base",
               "bce-reranker-base_v1", "bce-embedding-base_v1", "Llama-3-8B-Instruct", "mineru", "paddleocr",
               "pp-ocrv4", "cogview3", "flux.1-dev", "some-unknown-model", "tiny-llama"]


def formatter_cases() -> list[dict]:
    """JsonFormatter selectors over objects, lists and JSON inside text; YamlFormatter; the file-path helpers;
    ``ModelManager.get_model_type``."""
    out = [{"kind": "json", "selector": sel, "text": text} for sel in SELECTORS for text in JSON_TEXTS]
    out += [{"kind": "yaml", "selector": sel, "text": text} for sel in (None, "[title]", "[0][a]", "[answer]")
            for text in YAML_TEXTS]
    queries = ["Summarize", "", "say \"hi\"", "多语言"]
    files = [None, [], ["a.md"], ["a.md", "/tmp/b.png"], "c.txt"]
    out += [{"kind": "encode", "query": q, "files": f} for q in queries for f in files]
    out += [{"kind": "decode", "text": t} for t in
            ["plain", '<lazyllm-query>{"query": "q", "files": ["a.md"]}', '<lazyllm-query>{"query": "q"}',
             '<lazyllm-query>{"query": "q", "files": []}', '  <lazyllm-query>{"files": ["f"]}',
             '<lazyllm-query>not json', ""]]
    out += [{"kind": "merge", "args": a} for a in
            [["a", "b"], ['<lazyllm-query>{"query": "q", "files": ["a.md"]}', "more"], ["x"], ["a", "b", "c"],
             ['<lazyllm-query>{"query": "q", "files": []}', '<lazyllm-query>{"query": "r", "files": ["b"]}']]]
    out += [{"kind": "model_type", "name": name} for name in MODEL_NAMES]
    return out


def _plain(ns, spec: dict):
    spec = dict(spec)
    if "template" in spec:
        return ns.Prompter.from_template(spec["template"])
    return ns.Prompter.from_dict(spec)


def run_case(ns, case: dict) -> dict:
    """One call on the classes of namespace ``ns`` (fineflow's or the reference's)."""
    try:
        if case["kind"] == "prompter":
            prompter = getattr(ns, case["cls"])(case["instruction"], extra_keys=case["extra_keys"])
            if case["configs"]:
                prompter._set_model_configs(**case["configs"])
            result = prompter.generate_prompt(case["input"], history=case["history"], tools=case["tools"],
                                              **case["fmt"])
        elif case["kind"] == "plain":
            result = _plain(ns, case["spec"]).generate_prompt(case["input"], history=case["history"],
                                                              tools=case["tools"], label=case["label"])
        elif case["kind"] == "labelled":
            prompter = ns.EmptyPrompter() if case["cls"] == "EmptyPrompter" else getattr(ns, case["cls"])("{q}")
            result = prompter.generate_prompt(case["input"], label=case["label"])
        elif case["kind"] == "response":
            prompter = (_plain(ns, PLAIN[0]) if case["cls"] == "plain" else getattr(ns, case["cls"])("{q}"))
            if case["cls"] == "ChatPrompter":
                prompter._set_model_configs(soa="<a>")
            result = prompter.get_response(case["output"], case["input"])
        elif case["kind"] == "chat_options":
            prompter = ns.ChatPrompter("Be brief.", tools=case["ctor_tools"], skills=case["skills"],
                                       history=case["ctor_history"], enable_system=case["enable_system"])
            prompter._set_model_configs(tool_start_token="<call>", tool_end_token="</call>", tool_args_token="=>")
            result = prompter.generate_prompt("go", history=[["h", "i"]], tools=case["call_tools"], **case["fmt"])
        elif case["kind"] == "json":
            result = ns.JsonFormatter(case["selector"])(case["text"])
        elif case["kind"] == "yaml":
            result = ns.YamlFormatter(case["selector"])(case["text"])
        elif case["kind"] == "encode":
            result = ns.encode_query_with_filepaths(case["query"], case["files"])
        elif case["kind"] == "decode":
            result = ns.decode_query_with_filepaths(case["text"])
        elif case["kind"] == "merge":
            result = ns.lazyllm_merge_query(*case["args"])
        elif case["kind"] == "model_type":
            result = ns.ModelManager.get_model_type(case["name"])
        else:
            raise ValueError(f"unknown case kind {case['kind']}")
        json.dumps(result)
        return {"ok": result}
    except Exception as e:  # noqa: BLE001 (an error is an outcome to compare)
        return {"error": type(e).__name__}


def main() -> None:
    import logging

    logging.disable(logging.CRITICAL)
    import types

    import lazyllm.components as components  # the reference package, in its own environment
    import lazyllm.components.formatter as formatter
    from lazyllm.components.prompter import EmptyPrompter
    from lazyllm.components.utils.downloader import ModelManager

    ns = types.SimpleNamespace(**{**vars(components), **vars(formatter), "EmptyPrompter": EmptyPrompter,
                                  "ModelManager": ModelManager})

    cases = json.loads(open(sys.argv[1]).read())
    json.dump([run_case(ns, c) for c in cases], open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
