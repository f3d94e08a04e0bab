"""Prompt styles and tokenisation (``tasks.inference``), with expected values written out: records of every chat
format as evaluation examples and chat messages, prompts in both styles, and the label mask of a training example."""

from __future__ import annotations

import json
import shutil

import pytest

from tasks import inference
from tasks.inference import IGNORE, encode_example, example, messages, model_text, render_prompt, render_prompts
from tests.support.paths import DATASET, TINY_MODEL

ALPACA_PROMPT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                 "Write a response that appropriately completes the request.\n\n### Instruction:\n{}\n\n### Input:\n{}"
                 "\n\n### Response:\n")


def test_examples_from_every_chat_format():
    assert example({"instruction": "i", "input": "x", "output": "o", "system": "s"}) == \
        {"instruction": "i", "input": "x", "output": "o", "system": "s"}
    assert example({"instruction": "i", "output": "o"}) == \
        {"instruction": "i", "input": "", "output": "o", "system": ""}
    assert example({"instruction": "i", "input": None, "chosen": "c", "rejected": "r"})["output"] == "c"
    assert example({"instruction": "i"})["output"] == ""
    sharegpt = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q1"},
                                  {"from": "gpt", "value": "a1"}, {"from": "human", "value": "q2"},
                                  {"from": "gpt", "value": "a2"}]}
    assert example(sharegpt) == {"instruction": "q2", "input": "", "output": "a2", "system": "s"}
    openai = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}],
              "system": "top"}
    assert example(openai) == {"instruction": "q", "input": "", "output": "", "system": "top"}
    assert example({"messages": [{"role": "user", "content": "q"}]})["output"] == ""
    with pytest.raises(ValueError, match=r"^record has no user turn to evaluate: \['messages'\]$"):
        example({"messages": [{"role": "assistant", "content": "a"}]})
    with pytest.raises(ValueError, match="no user turn"):
        example({})


def test_messages_join_instruction_and_input_and_lead_with_the_system():
    assert messages({"instruction": "i", "input": "x", "output": "o"}) == [{"role": "user", "content": "i\nx"}]
    assert messages({"instruction": "i", "output": "o", "system": "s"}) == \
        [{"role": "system", "content": "s"}, {"role": "user", "content": "i"}]
    assert messages({"instruction": "", "input": "x", "output": ""}) == [{"role": "user", "content": "x"}]


def test_prompter_style_prompts_put_the_system_before_the_instruction():
    assert render_prompt("alpaca", {"instruction": "i", "input": "x"}) == ALPACA_PROMPT.format("i", "x")
    assert render_prompt("alpaca", {"instruction": "i", "input": "x", "system": "s"}) == \
        ALPACA_PROMPT.format("s\ni", "x")


@pytest.fixture(scope="module")
def tokenizer():
    return inference.load_tokenizer(str(TINY_MODEL))


def test_the_tokenizer_pads_on_the_left_with_eos(tokenizer):
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    model, tok = inference.load_model(str(TINY_MODEL))
    assert not model.training and next(model.parameters()).dtype.is_floating_point and tok.padding_side == "left"
    assert str(next(model.parameters()).dtype) == "torch.float32"


def test_chat_template_style_needs_a_template_and_uses_it(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="^prompt style 'chat_template' needs a tokenizer that has a chat template$"):
        render_prompt("chat_template", {"instruction": "i"}, tokenizer)
    with pytest.raises(ValueError, match="chat template"):
        render_prompt("chat_template", {"instruction": "i"})
    model = tmp_path / "m"
    shutil.copytree(TINY_MODEL, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    record = {"instruction": "i", "input": "x", "system": "s"}
    assert render_prompts("chat_template", [record], str(model)) == ["<system>s<user>i\nx<assistant>"]
    assert render_prompts("alpaca", [record], str(model)) == [ALPACA_PROMPT.format("s\ni", "x")]


def test_model_text_adds_bos_for_prompter_styles_only(tokenizer):
    assert model_text(tokenizer, "alpaca", "p") == tokenizer.bos_token + "p"
    assert model_text(tokenizer, "chat_template", "p") == "p"


def test_a_training_example_masks_the_prompt_unless_asked_not_to(tokenizer):
    prompt, output = "Say hi:", " hi"
    head = tokenizer(tokenizer.bos_token + prompt, add_special_tokens=False).input_ids
    full = tokenizer(tokenizer.bos_token + prompt + output + tokenizer.eos_token, add_special_tokens=False).input_ids
    enc = encode_example(tokenizer, "alpaca", prompt, output)
    assert enc["input_ids"] == full and enc["attention_mask"] == [1] * len(full)
    assert enc["labels"] == [IGNORE] * len(head) + full[len(head):] and full[-1] == tokenizer.eos_token_id
    assert encode_example(tokenizer, "alpaca", prompt, output, train_on_inputs=True)["labels"] == full
    cut = encode_example(tokenizer, "alpaca", prompt, output, cutoff_len=len(head) - 1)
    assert cut["input_ids"] == full[:len(head) - 1] and cut["labels"] == [IGNORE] * (len(head) - 1)
    chat = encode_example(tokenizer, "chat_template", prompt, output)  # a chat template brings its own tokens
    assert chat["input_ids"] == tokenizer(prompt + output + tokenizer.eos_token, add_special_tokens=False).input_ids


@pytest.fixture(scope="module")
def unruly_model(tmp_path_factory):
    """The tiny model with settings many real checkpoints ship: a tokenizer that adds BOS by itself, and a
    generation config that samples hot and names another EOS and no pad token. Generation and tokenisation must
    not depend on them."""
    path = tmp_path_factory.mktemp("unruly") / "tiny"
    shutil.copytree(TINY_MODEL, path)
    tok = json.loads((path / "tokenizer.json").read_text())
    tok["post_processor"] = {"type": "TemplateProcessing",
                             "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                             "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}}
    (path / "tokenizer.json").write_text(json.dumps(tok))
    gen = json.loads((path / "generation_config.json").read_text())
    gen.update(do_sample=True, temperature=5.0, top_k=0, eos_token_id=7)
    gen.pop("pad_token_id")
    (path / "generation_config.json").write_text(json.dumps(gen))
    return path


def test_generation_is_greedy_and_stops_at_the_tokenizers_eos_whatever_the_model_config(unruly_model, tokenizer):
    from tests.support.models import greedy_by_hand

    model, unruly_tok = inference.load_model(str(unruly_model))
    assert unruly_tok("ab").input_ids[0] == unruly_tok.bos_token_id  # it does add BOS by itself
    reference = inference.load_model(str(TINY_MODEL))
    prompts = [render_prompt("alpaca", {"instruction": "Convert the word to upper case.", "input": "saw"}), "the"]
    expected = [greedy_by_hand(*reference, p, 12) for p in prompts]
    for _ in range(2):  # sampling would not give the same answer twice
        assert inference.generate(model, unruly_tok, prompts, "alpaca", 12) == expected
    assert inference.generate(model, unruly_tok, ["the"], "alpaca") == [greedy_by_hand(*reference, "the", 32)]
    # Tokenising a training example adds nothing either.
    assert encode_example(unruly_tok, "alpaca", "Say hi:", " hi") == \
        encode_example(tokenizer, "alpaca", "Say hi:", " hi")


def test_models_load_in_float32_and_prompter_styles_need_no_tokenizer(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(TINY_MODEL), dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    inference.load_tokenizer(str(TINY_MODEL)).save_pretrained(tmp_path / "bf16")
    model, _ = inference.load_model(str(tmp_path / "bf16"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # A prompter style renders without reading a tokenizer, so the model path is not even opened.
    assert render_prompts("alpaca", [{"instruction": "i", "input": "x"}], str(tmp_path / "nowhere")) == \
        [ALPACA_PROMPT.format("i", "x")]
    no_bos = type("Tokenizer", (), {"bos_token": None})()
    assert model_text(no_bos, "alpaca", "p") == "p"
    # A tokenizer without a pad token pads with EOS (left, for batched generation); one with a pad token keeps it.
    from transformers import AutoTokenizer

    bare = AutoTokenizer.from_pretrained(str(TINY_MODEL))
    bare.pad_token = None
    bare.save_pretrained(tmp_path / "no-pad")
    padded = inference.load_tokenizer(str(tmp_path / "no-pad"))
    assert padded.pad_token == padded.eos_token == "</s>" and padded.padding_side == "left"
    assert inference.load_tokenizer(str(TINY_MODEL)).pad_token == "<pad>"


def test_chat_template_prompts_are_rendered_when_the_data_is_prepared(chat_model, tmp_path):
    """AlpacaLoRA in the model's own chat template: the prepared prompt is the tokenizer's rendering of the record,
    and the merged model keeps the template beside its tokenizer."""
    from tasks.data import prepare, read_jsonl
    from tasks.finetune.merge import copy_files

    prepared = prepare(DATASET, tmp_path / "data", val_set_size=5, prompt_template_name="chat_template",
                       tokenizer_path=str(chat_model))
    tok = inference.load_tokenizer(str(chat_model))
    for record in read_jsonl(prepared.train_path)[:5]:
        user = "\n".join(p for p in (record["instruction"], record.get("input")) if p)
        assert record["prompt"] == tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                           add_generation_prompt=True)
    with pytest.raises(ValueError, match="chat_template' needs the model whose tokenizer holds the template"):
        prepare(DATASET, tmp_path / "again", prompt_template_name="chat_template")
    (tmp_path / "src").mkdir()
    for name in ("tokenizer.json", "chat_template.jinja", "model.safetensors"):
        (tmp_path / "src" / name).write_text(name)
    assert copy_files(str(tmp_path / "src"), str(tmp_path / "dst"), "tokeniz*") == ["tokenizer.json",
                                                                                   "chat_template.jinja"]


def test_loss_batches_bound_the_padded_tokens():
    from tasks.inference.generation import loss_batches

    row = lambda n: ([1] * n, [1] * n)  # noqa: E731
    batches = loss_batches([row(10)] * 5 + [row(3000)] + [row(500)] * 5, 2048)
    assert [len(b) for b in batches] == [5, 1, 4, 1]  # a row longer than the budget goes alone
    assert all(len(b) * max(len(r[0]) for r in b) <= 2048 for b in batches if len(b) > 1)
    assert sum(batches, []) == [row(10)] * 5 + [row(3000)] + [row(500)] * 5  # every row, in order
