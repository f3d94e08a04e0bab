import pytest

from tasks.prompter import Prompter


def test_reference_examples():
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


def test_alpaca_template_renders_instruction_and_input():
    p = Prompter.from_template("alpaca")
    prompt = p.generate_prompt({"instruction": "Convert the word to upper case.", "input": "abc"})
    assert prompt.endswith("### Instruction:\nConvert the word to upper case.\n\n### Input:\nabc\n\n### Response:\n")
    assert p.get_response(prompt + "ABC") == "ABC"
    assert p.generate_prompt({"instruction": "x", "input": "y"}, label="z").endswith("### Response:\nz")


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown prompt template 'nope'; known: alpaca"):
        Prompter.from_template("nope")
    with pytest.raises(KeyError, match="lacks field"):
        Prompter.from_template("alpaca").generate_prompt({"instruction": "only"})
    with pytest.raises(ValueError, match="exactly one slot"):
        Prompter.from_template("alpaca").generate_prompt("a string")
    (tmp_path / "p.json").write_text('{"prompt": "Q: {q}", "response_split": "A:"}')
    assert Prompter.from_file(tmp_path / "p.json").get_response("Q: hi A: there") == "there"
