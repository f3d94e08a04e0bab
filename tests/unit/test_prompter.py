"""Prompters: the reference's documented examples, as the reference package renders them.

Where a documented example string disagrees with what ``lazyllm==1.4.0`` does, the package is the truth
(tests/component/test_reference_diff.py compares thousands of calls with it); a comment says what the example shows.
"""

import json

import pytest

from tasks.prompter import (PROMPTERS, AlpacaPrompter, ChatPrompter, EmptyPrompter, LazyLLMPrompterBase, Prompter,
                            PrompterError, get_prompter, render_record)

SYSTEM = "You are an AI-Agent developed by LazyLLM."
PREFIX = ("Below is an instruction that describes a task, paired with extra messages such as input that provides "
          "further context if possible. Write a response that appropriately completes the request.\n\n"
          "### Instruction:\n")
EXTRA = "Here are some extra messages you can referred to:\n\n"


# -- Prompter (plain templates) -------------------------------------------------------------------
def test_prompter_reference_examples():
    p = Prompter(prompt="Answer the following: {question}")
    assert p.generate_prompt("What is AI?") == "Answer the following: What is AI?"
    assert p.generate_prompt({"question": "Define machine learning"}) == "Answer the following: Define machine learning"
    p = Prompter(prompt="Instruction: {instruction}",
                 chat_prompt="Instruction: {instruction}\nHistory:\n{llm_chat_history}",
                 history_symbol="llm_chat_history", eoa="</s>", eoh="|")
    got = p.generate_prompt(input={"instruction": "Translate this."},
                            history=[["hello", "你好"], ["how are you", "你好吗"]])
    assert got == "Instruction: Translate this.\nHistory:\nhello|你好</s>how are you|你好吗"
    p = Prompter.from_dict({"prompt": "Task: {task}", "response_split": "---"})
    assert p.generate_prompt("Summarize this article.") == "Task: Summarize this article."
    assert p.get_response("Task: Summarize this article.---This is the summary.") == "This is the summary."


def test_prompter_alpaca_template_and_label():
    p = Prompter.from_template("alpaca")
    prompt = p.generate_prompt({"instruction": "Convert the word to upper case.", "input": "abc"})
    assert prompt.endswith("### Instruction:\nConvert the word to upper case.\n\n### Input:\nabc\n\n### Response:\n")
    assert p.get_response(prompt + "ABC") == "\nABC"  # split at "### Response:", nothing stripped (as the reference)
    assert p.get_response(prompt + "ABC", prompt) == "ABC"
    assert p.generate_prompt({"instruction": "x", "input": "y"}, label="z").endswith("### Response:\nz")
    assert Prompter.empty().generate_prompt("as is") == "as is"


def test_prompter_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown prompt template 'nope'; known: alpaca"):
        Prompter.from_template("nope")
    with pytest.raises(PrompterError, match=r"cannot fill the prompt .* KeyError\('input'\)"):
        Prompter.from_template("alpaca").generate_prompt({"instruction": "only"})
    with pytest.raises(PrompterError, match="exactly one slot"):
        Prompter.from_template("alpaca").generate_prompt("a string")
    with pytest.raises(ValueError, match=r"plus exactly the history slot \{llm_chat_history\}"):
        Prompter(prompt="{a}", chat_prompt="no history here {a}")
    (tmp_path / "p.json").write_text('{"prompt": "Q: {q}", "response_split": "A:"}')
    assert Prompter.from_file(tmp_path / "p.json").get_response("Q: hi A: there") == " there"


# -- EmptyPrompter ----------------------------------------------------------------------------------
def test_empty_prompter_reference_examples():
    p = EmptyPrompter()
    assert p.generate_prompt("Hello LazyLLM") == "Hello LazyLLM"
    assert p.generate_prompt({"query": "Tell me a joke"}) == {"query": "Tell me a joke"}
    assert p.generate_prompt("No-op", history=[["Hi", "Hello"]], tools=[{"name": "search"}], label="debug") == "No-op"


# -- AlpacaPrompter -----------------------------------------------------------------------------------
def test_alpaca_design_example():
    got = AlpacaPrompter("请完成加法运算, 输入为{instruction}").generate_prompt("a+b")
    assert got == SYSTEM + "\n" + PREFIX + "请完成加法运算, 输入为a+b\n\n\n\n### Response:\n"


def test_alpaca_reference_examples():
    p = AlpacaPrompter("hello world {instruction}")
    # The reference shows " ### Instruction" (a stray space) and three newlines before "### Response";
    # the template "{system}\n{instruction}\n{tools}\n{user}### Response:\n" after an instruction ending in
    # "\n\n" gives four.
    assert p.generate_prompt("this is my input") == (
        SYSTEM + "\n" + PREFIX + "hello world this is my input\n\n\n\n### Response:\n")
    # Consistent apart from the same stray space.
    assert p.generate_prompt("this is my input", return_dict=True) == {"messages": [
        {"role": "system", "content": SYSTEM + "\n" + PREFIX + "hello world this is my input\n\n"},
        {"role": "user", "content": ""}]}

    p = AlpacaPrompter("hello world {instruction}, {input}", extra_keys=["knowledge"])
    values = dict(instruction="hello world", input="my input", knowledge="lazyllm")
    # The reference again shows one newline fewer before "### Response" than the template gives.
    assert p.generate_prompt(values) == (
        SYSTEM + "\n" + PREFIX + "hello world hello world, my input\n\n" + EXTRA
        + "### knowledge:\nlazyllm\n\n\n\n### Response:\n")
    assert p.generate_prompt(values, return_dict=True) == {"messages": [
        {"role": "system", "content": SYSTEM + "\n" + PREFIX + "hello world hello world, my input\n\n" + EXTRA
         + "### knowledge:\nlazyllm\n\n"},
        {"role": "user", "content": ""}]}

    p = AlpacaPrompter(dict(system="hello world", user="this is user instruction {input}"))
    # The reference writes "hello word" here (a typo); otherwise the string matches.
    # The package writes "hello world\n\n" where the example shows "\n\n\n\n": the template is
    # "{system}\n{instruction}\n{tools}\n{user}", and a dict instruction's system part ends at the user part.
    assert p.generate_prompt(dict(input="my input")) == (
        SYSTEM + "\n" + PREFIX + "hello world\n\nthis is user instruction my input### Response:\n")
    assert p.generate_prompt(dict(input="my input"), format="openai") == {"messages": [
        {"role": "system", "content": SYSTEM + "\n" + PREFIX + "hello world"},
        {"role": "user", "content": "this is user instruction my input"}]}
    # Extra keys of a dict instruction belong to its user part.
    p = AlpacaPrompter(dict(system="sys", user="u {input}"), extra_keys=["k"])
    assert p.generate_prompt({"input": "i", "k": "v"}, format="openai")["messages"][1]["content"] == \
        "u i\n\n" + EXTRA + "### k:\nv\n\n"


def test_alpaca_rejects_history_and_unplaced_input():
    with pytest.raises(PrompterError, match="does not support chat history"):
        AlpacaPrompter("{instruction}").generate_prompt("x", history=[["a", "b"]])
    with pytest.raises(PrompterError, match="no place for the input 'x'"):
        AlpacaPrompter("no slots").generate_prompt("x")
    with pytest.raises(PrompterError, match=r"unexpected input keys \['a', 'b'\]"):
        AlpacaPrompter("{instruction}").generate_prompt({"instruction": "i", "a": 1, "b": 2})
    with pytest.raises(PrompterError, match=r"lacks key\(s\) \['knowledge'\]"):
        AlpacaPrompter("{instruction}", extra_keys=["knowledge"]).generate_prompt({"instruction": "i"})
    with pytest.raises(PrompterError, match="pass a dict"):
        AlpacaPrompter("{a} {b}").generate_prompt("x")


def test_alpaca_get_response_and_tools():
    p = AlpacaPrompter("{instruction}")
    prompt = p.generate_prompt("q")
    assert p.get_response(prompt + "answer") == "answer"
    assert p.get_response("garbage ### Response:\nanswer") == "answer"
    tools = [{"type": "function", "function": {"name": "search"}}]
    # In a text prompt, tools bring the function-call prompt, whose tool tokens are the model's: without them
    # it has unfilled slots (the reference fails the same way).
    with pytest.raises(PrompterError, match="tool_start_token"):
        p.generate_prompt("q", tools=tools)
    p.set_model_configs(tool_start_token="<call>", tool_args_token="=>", tool_end_token="</call>")
    text = p.generate_prompt("q", tools=tools)
    assert "<call>tool name (one of [\"search\"])\n=>the input to the tool" in text
    # Tools are written as JSON5, as the reference writes them (keys unquoted).
    assert '### Function-call Tools. \n\n[{type: "function", "function": {name: "search"}}]\n\n' in text
    assert p.generate_prompt("q", tools=tools, return_dict=True)["tools"] == tools
    both = AlpacaPrompter("{instruction}", tools=tools).generate_prompt("q", tools=tools[:0] or None,
                                                                        format="openai")
    assert both["tools"] == tools  # the constructor's tools when the call gives none


# -- ChatPrompter -----------------------------------------------------------------------------------------
def test_chat_design_example():
    assert ChatPrompter("请完成加法运算, 输入为{instruction}").generate_prompt("a+b") == (
        SYSTEM + "请完成加法运算, 输入为a+b" + "\n" * 8)


def test_chat_reference_examples():
    # The reference's string outputs for ChatPrompter ('...hello world\nthis is my input\n') leave out the
    # template's newlines ("{eos}\n\n{history}\n{soh}\n{user}{input}\n{eoh}{soa}\n"); the template is used.
    p = ChatPrompter("hello world")
    assert p.generate_prompt("this is my input") == SYSTEM + "hello world\n\n\n\n\n\nthis is my input\n\n"
    # The reference's system content is 'SYSTEM\nhello world': it drops the "\n\n" that the instruction
    # template ("{instruction}\n{extra keys}\n") adds.
    assert p.generate_prompt("this is my input", return_dict=True) == {"messages": [
        {"role": "system", "content": SYSTEM + "\nhello world\n\n"}, {"role": "user", "content": "this is my input"}]}

    p = ChatPrompter("hello world {instruction}", extra_keys=["knowledge"])
    values = {"instruction": "this is my ins", "input": "this is my inp", "knowledge": "LazyLLM-Knowledge"}
    filled = "hello world this is my ins\n" + EXTRA + "### knowledge:\nLazyLLM-Knowledge\n\n\n"
    assert p.generate_prompt(values) == SYSTEM + filled + "\n\n\n\nthis is my inp\n\n"
    # The reference renders history as 's1|e1\ns2|e2', which needs soh/eoh/eoa tokens; by default they are
    # empty, so turns are concatenated. With tokens set, they appear as configured.
    assert p.generate_prompt(values, history=[["s1", "e1"], ["s2", "e2"]]) == (
        SYSTEM + filled + "\n\ns1e1s2e2\n\nthis is my inp\n\n")
    p.set_model_configs(soh="<u>", eoh="|", soa="", eoa="\n")
    assert "<u>s1|e1\n<u>s2|e2\n" in p.generate_prompt(values, history=[["s1", "e1"], ["s2", "e2"]])

    p = ChatPrompter(dict(system="hello world", user="this is user instruction {input}"))
    values = {"input": "my input", "query": "this is user query"}
    # The reference joins the user part and the input with a space; the template writes "{user}{input}".
    assert p.generate_prompt(values) == (
        SYSTEM + "hello world" + "\n\n\n\n" + "this is user instruction my inputthis is user query\n\n")
    assert p.generate_prompt(values, return_dict=True) == {"messages": [
        {"role": "system", "content": SYSTEM + "\nhello world"},
        {"role": "user", "content": "this is user instruction my inputthis is user query"}]}


def test_chat_history_from_constructor_then_call_and_openai_messages():
    p = ChatPrompter("sys", history=[["u0", "a0"]]).set_model_configs(soh="<h>", eoh="</h>", soa="<a>", eoa="</a>")
    text = p.generate_prompt("now", history=[{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}])
    assert "<h>u0</h><a>a0</a><h>u1</h><a>a1</a>" in text
    assert text.endswith("<h>\nnow\n</h><a>\n")
    messages = p.generate_prompt("now", history=[["u1", "a1"]], format="openai")["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in messages[1:]] == ["u0", "a0", "u1", "a1", "now"]
    assert p.get_response("<a>\nthe answer") == "the answer"  # split at the assistant token and its newline


def test_tool_calls_and_tool_results_use_the_tool_tokens():
    p = ChatPrompter("{tool_start_token} marks a call").set_model_configs(
        soa="<a>", eoa="</a>", soe="<tool>", eoe="</tool>", tool_start_token="<call>", tool_end_token="</call>",
        tool_args_token="=>")
    history = [{"role": "user", "content": "weather?"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"function": {"name": "get_weather", "arguments": {"city": "北京"}}}]},
               {"role": "tool", "content": "sunny"}]
    text = p.generate_prompt("and tomorrow?", history=history)
    assert text.startswith(SYSTEM + "<call> marks a call")
    assert '<a><call>\nget_weather=>{city: "北京"}</call>\n</a><tool>sunny</tool>' in text  # JSON5, as the reference
    messages = p.generate_prompt("and tomorrow?", history=history, format="openai")["messages"]
    assert messages[1:4] == history and messages[-1] == {"role": "user", "content": "and tomorrow?"}


def test_pre_hook_show_and_system_prompt_switch(monkeypatch, caplog):
    def hook(input, history, tools, label):
        return input.upper(), history, tools, label

    p = ChatPrompter("{q}").pre_hook(hook)
    assert p.generate_prompt("hi").startswith(SYSTEM + "HI")
    with caplog.at_level("INFO", logger="tasks.prompter.base"):
        p.generate_prompt("hi", show=True)
    assert "HI" in caplog.text
    monkeypatch.setenv("LAZYLLM_DISABLE_SYSTEM_PROMPT", "1")
    assert ChatPrompter("{q}").generate_prompt("x", format="openai")["messages"][0]["content"] == "x\n\n"
    assert AlpacaPrompter("{q}").generate_prompt("x").startswith(PREFIX)  # leading newlines are stripped


def test_input_is_not_mutated_and_configs_are_checked():
    p = ChatPrompter("{a}")
    values = {"a": "1", "rest": "2"}
    p.generate_prompt(values)
    assert values == {"a": "1", "rest": "2"}
    with pytest.raises(TypeError, match="allowed: .*soa"):
        p.set_model_configs(start="x")
    with pytest.raises(PrompterError, match="unknown format 'xml'"):
        p.generate_prompt("x", format="xml")
    with pytest.raises(PrompterError, match="history must be .user, assistant. pairs or message dicts"):
        p.generate_prompt("1", history=["not a turn"])
    assert p.model_configs["system"] == SYSTEM
    assert isinstance(p, LazyLLMPrompterBase)


# -- by name, as the pipeline uses them ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PROMPTERS))
def test_every_named_prompter_renders_a_record_and_recovers_the_answer(name):
    prompter = get_prompter(name)
    prompt = render_record(prompter, {"instruction": "Convert the word to upper case.", "input": "fox",
                                      "output": "FOX"})
    assert "Convert the word to upper case." in prompt and "fox" in prompt and "FOX" not in prompt
    assert prompter.get_response(prompt + "FOX", prompt).strip() == "FOX"


def test_lazyllm_alpaca_is_the_alpaca_prompter():
    prompt = render_record(get_prompter("lazyllm_alpaca"), {"instruction": "Do it.", "input": "x"})
    assert prompt == SYSTEM + "\n" + PREFIX + "Do it.\n\n" + EXTRA + "### input:\nx\n\n\n\n### Response:\n"


def test_a_prompter_from_a_file_shows_its_prompts_when_asked(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"prompt": "Übersetze: {input}", "response_split": "->"}), encoding="utf-8")
    quiet = Prompter.from_file(path)
    assert quiet.generate_prompt("x") == "Übersetze: x" and capsys.readouterr().out == ""
    loud = Prompter.from_file(str(path), show=True)
    assert loud.generate_prompt("y") == "Übersetze: y" and "Übersetze: y" in capsys.readouterr().out


# -- errors say exactly what is wrong; show logs the prompt -----------------------------------------------------
@pytest.mark.parametrize("make, call, message", [
    (lambda: ChatPrompter("Do {task} and {other}"), lambda p: p.generate_prompt("x"),
     "the instruction has slots ['task', 'other']; pass a dict with those keys, not a string"),
    (lambda: ChatPrompter("Do {task} {"), lambda p: p.generate_prompt("x"), None),
    (lambda: ChatPrompter("Do {task}"), lambda p: p.generate_prompt(3.5),
     "input must be a str or a dict (filling the instruction's slots), got float"),
    (lambda: ChatPrompter("Do {task}"), lambda p: p.generate_prompt({"other": "x"}),
     "input lacks key(s) ['task']; the instruction's slots are ['task']"),
    (lambda: ChatPrompter("Do {task}"), lambda p: p.generate_prompt({"task": "t", "a": "1", "b": "2"}),
     "unexpected input keys ['a', 'b']: the slots are ['task'], and at most one other key may be given as the input"),
    (lambda: ChatPrompter("Do {task}"), lambda p: p.generate_prompt({"task": 5}),
     "input['task'] fills a slot and must be a str, got int"),
    (lambda: ChatPrompter("hi"), lambda p: p.generate_prompt("x", history=[["a", "b", "c"]], format="openai"),
     "history item 0 must be [user, assistant], got 3 elements"),
    (lambda: ChatPrompter("hi"), lambda p: p.generate_prompt("x", history=[["a", "b"], 7], format="openai"),
     "history item 1 must be [user, assistant] or a message dict, got 7"),
    (lambda: ChatPrompter("hi"), lambda p: p.generate_prompt("x", history=[["a", "b"], ["c"]]),
     "a history turn must be [user, assistant], got ['c']"),
    (lambda: ChatPrompter("hi"), lambda p: p.generate_prompt("x", history=["a"]),
     "history must be [user, assistant] pairs or message dicts, got 'a'"),
    (lambda: ChatPrompter("hi"), lambda p: p.generate_prompt({"q": {"role": "user", "content": "x"}}),
     "a text prompt has no place for a message dict as the input: {'role': 'user', 'content': 'x'}"),
    (lambda: ChatPrompter("hi"), lambda p: p.generate_prompt(5, format="openai"),
     "the input of a messages prompt must be a str or a message dict, got 5"),
    (lambda: AlpacaPrompter("hi"), lambda p: p.generate_prompt("x", history=[["a", "b"]]),
     "AlpacaPrompter does not support chat history; use ChatPrompter"),
    (lambda: AlpacaPrompter("hi {a}"), lambda p: p.generate_prompt({"a": "1", "b": "2"}),
     "AlpacaPrompter has no place for the input '2': every input key must be a slot of the instruction or one of "
     "extra_keys"),
    (lambda: ChatPrompter("hi", extra_keys=[1]), None, "extra_keys must be a str or a list of str, got [1]"),
    (lambda: ChatPrompter("hi", extra_keys=7), None, "extra_keys must be a str or a list of str, got 7"),
    (lambda: ChatPrompter(5), None, "instruction must be a str or dict(system=..., user=...), got <class 'int'>"),
])
def test_prompter_errors_are_exact(make, call, message):
    with pytest.raises((PrompterError, TypeError, ValueError)) as e:
        prompter = make()
        call(prompter)
    if message is None:  # a broken format string: the message names the instruction and its slot
        assert str(e.value).startswith("the instruction 'Do {task} {\\n\\n' is not a format string with one slot "
                                       "{task}: ValueError(")
    else:
        assert str(e.value) == message


def test_unknown_instruction_and_config_keys_name_the_class():
    with pytest.raises(TypeError, match=r"^ChatPrompter instruction got unknown keyword argument\(s\) sys"):
        ChatPrompter({"sys": "s", "user": "u"})
    with pytest.raises(TypeError, match=r"^ChatPrompter.set_model_configs got unknown keyword argument\(s\) sox"):
        ChatPrompter("hi").set_model_configs(sox="<s>")


def test_show_logs_the_prompt_and_defaults_stay_quiet(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="tasks.prompter.base")
    assert EmptyPrompter().generate_prompt("x") == "x" and not caplog.records
    assert EmptyPrompter().generate_prompt("y", show=True) == "y"
    assert caplog.records[-1].getMessage() == "prompt: 'y'"
    quiet = ChatPrompter("hi").generate_prompt("q")
    assert isinstance(quiet, str) and len(caplog.records) == 1
    AlpacaPrompter("hi", show=True).generate_prompt({})
    ChatPrompter("hi", show=True).generate_prompt("q")
    assert len(caplog.records) == 3 and all(r.getMessage().startswith("prompt: ") for r in caplog.records)
    assert EmptyPrompter().generate_prompt("z", return_dict=True) == "z"  # the empty prompter returns its input


def test_json5_keys_lists_and_text_outside_ascii():
    from tasks.prompter.tools import dumps_json5

    assert dumps_json5({"$ref": 1, "a$b": 2, "_x": 3, "1a": 4, "if": 5, "a b": 6, "é": 7, "名 字": 8}) == \
        '{$ref: 1, a$b: 2, _x: 3, "1a": 4, "if": 5, "a b": 6, é: 7, "名 字": 8}'
    assert dumps_json5([1, "ü", [True, None], {"k": []}]) == '[1, "ü", [true, null], {k: []}]'
    assert dumps_json5(("a",)) == '["a"]' and dumps_json5("日本") == '"日本"'


def test_plain_prompter_errors_and_responses():
    p = Prompter("Q: {input}", response_split="A:")
    with pytest.raises(PrompterError, match="^Prompter does not support tools; use ChatPrompter$"):
        p.generate_prompt("x", tools=[{"type": "function"}])
    chat = Prompter("{llm_chat_history}Q: {input}")
    with pytest.raises(PrompterError, match=r"history \[.not a pair.\]: "
                                            r"PrompterError\(.history must be a list of \[user, assistant\] lists.\)$"):
        chat.generate_prompt("x", history=["not a pair"])
    assert p.get_response("Q: x A: yes") == " yes"
    assert Prompter("Q: {input}").get_response("one two") == "one two"  # no split: the whole text
