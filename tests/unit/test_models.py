"""ModelManager: local search and its defaults, model types and prompt keys (hub downloads:
``tests/component/test_model_hub.py``; the S3 mirror: ``tests/e2e/test_bucket.py``)."""

import shutil

import pytest

from tasks.models import MODELS, LLMType, ModelManager, get_model_prompt_keys, get_model_type
from tasks.prompter import ChatPrompter
from tests.support.paths import TINY_MODEL


def test_defaults_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LAZYLLM_MODEL_SOURCE", "huggingface")
    monkeypatch.setenv("LAZYLLM_MODEL_SOURCE_TOKEN", "secret-token")
    monkeypatch.setenv("LAZYLLM_MODEL_CACHE_DIR", str(tmp_path))
    m = ModelManager()
    assert (m.model_source, m.token, m.cache_dir) == ("huggingface", "secret-token", tmp_path)
    assert "secret-token" not in repr(m)
    monkeypatch.delenv("LAZYLLM_MODEL_SOURCE")
    assert ModelManager().model_source == "modelscope"
    with pytest.raises(ValueError, match="model_source must be one of huggingface, modelscope"):
        ModelManager(model_source="civitai")


def test_search_order_model_path_then_cache(tmp_path):
    root, cache = tmp_path / "root", tmp_path / "cache"
    shutil.copytree(TINY_MODEL, root / "internlm2-chat-7b")
    shutil.copytree(TINY_MODEL, cache / "internlm2-chat-7b")
    m = ModelManager(model_path=str(root), cache_dir=str(cache))
    assert m.download("internlm2-chat-7b") == str(root / "internlm2-chat-7b")
    assert ModelManager(model_path="", cache_dir=str(cache)).download("internlm2-chat-7b") == \
        str(cache / "internlm2-chat-7b")
    assert m.download(str(TINY_MODEL)) == str(TINY_MODEL)
    assert m.download("") is False
    with pytest.raises(ValueError, match="invalid model name"):
        m.download("../../etc/passwd")


def test_several_model_path_roots_are_searched_in_order(tmp_path, monkeypatch):
    first, second, cache = tmp_path / "first", tmp_path / "second", tmp_path / "cache"
    shutil.copytree(TINY_MODEL, second / "internlm2-chat-7b")
    shutil.copytree(TINY_MODEL, second / "only-here")
    monkeypatch.setenv("LAZYLLM_MODEL_PATH", f"{first}::{second}")  # an empty entry is skipped
    monkeypatch.setenv("LAZYLLM_MODEL_CACHE_DIR", str(cache))
    assert ModelManager().download("only-here") == str(second / "only-here")
    shutil.copytree(TINY_MODEL, first / "internlm2-chat-7b")
    assert ModelManager().download("internlm2-chat-7b") == str(first / "internlm2-chat-7b")  # the first root wins
    assert ModelManager().find_local("nowhere") is None


def test_model_types_and_llmtype():
    assert LLMType("LLM") is LLMType.LLM and LLMType.LLM == "llm" and LLMType.VLM == "VLM"
    assert {LLMType.EMBED: 1}["embed"] == 1
    cases = {"internlm2-chat-7b": "llm", "InternVL3_5-1B": "vlm", "bge-m3": "embed", "BAAI/bge-reranker-large":
             "rerank", "openai/clip-vit-base-patch32": "cross_modal_embed", "SenseVoiceSmall": "stt",
             "ChatTTS": "tts", "bark": "tts", "musicgen-small": "tts", "stable-diffusion-3-medium": "sd",
             "PP-OCRv4": "ocr", "Qwen2-VL-2B-Instruct": "vlm", "whisper-large-v3": "stt", "gte-large": "embed",
             "some-new-model": "llm", "/abs/path/to/bge-m3": "embed"}
    assert {m: get_model_type(m) for m in cases} == cases
    for name in ("chatglm3-6b", "internlm2-chat-20b", "internlm2-chat-7b", "InternVL3_5-1B", "bge-m3",
                 "SenseVoiceSmall", "ChatTTS", "bark", "musicgen-small", "stable-diffusion-3-medium"):
        assert name.lower() in MODELS  # every model the reference names has a short name
    with pytest.raises(ValueError, match="non-empty"):
        get_model_type("")


def test_prompt_keys_configure_a_chat_prompter():
    keys = get_model_prompt_keys("internlm2-chat-7b")
    assert keys["soh"] == "<|im_start|>user\n" and get_model_prompt_keys("unknown-model") == {}
    prompt = ChatPrompter("be brief").set_model_configs(**keys).generate_prompt("hi")
    assert "<|im_start|>user\n" in prompt and prompt.endswith("<|im_start|>assistant\n\n")


def test_one_weights_check_for_every_kind_of_model_folder(tmp_path):
    """``holds_weights`` (the contract's ``validate_model_path``) is the one check for finding, downloading and
    serving a model: any weights format served here, at any depth, and never a folder still being filled."""
    from tasks.files import INCOMPLETE_MARKER
    from tasks.models import holds_weights, validate_model_path

    assert holds_weights(TINY_MODEL) and validate_model_path is holds_weights
    for name in ("model.gguf", "ocr/det.onnx", "model.bin", "weights.pt"):
        folder = tmp_path / name.replace("/", "_").replace(".", "_")
        (folder / name).parent.mkdir(parents=True)
        (folder / name).write_bytes(b"w")
        assert holds_weights(folder), name
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    assert not holds_weights(bare) and not holds_weights(None) and not holds_weights(tmp_path / "absent")
    (bare / "model.safetensors").write_bytes(b"w")
    (bare / INCOMPLETE_MARKER).touch()
    assert not holds_weights(bare)


def test_a_trainers_checkpoints_are_not_a_model(tmp_path):
    from tasks.models import holds_weights

    (tmp_path / "checkpoint-30").mkdir()
    (tmp_path / "checkpoint-30" / "adapter_model.safetensors").write_bytes(b"w")
    assert not holds_weights(tmp_path)
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"w")
    assert holds_weights(tmp_path)
