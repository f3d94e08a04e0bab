"""ModelManager: local search, hub downloads (against a local stand-in hub) with resume and progress,
the S3 mirror on SeaweedFS, model types and prompt keys."""

import filecmp
import shutil

import pytest

from tasks.models import (INCOMPLETE_MARKER, MODELS, LLMType, ModelManager, download_model, get_model_prompt_keys,
                          get_model_type, upload_model, validate_model_path)
from tasks.models.local import revision_of
from tasks.models.mirror import MirrorError
from tasks.prompter import ChatPrompter

from conftest import TINY_MODEL
from hub_server import FakeHub

HF_REPO, MS_REPO = "internlm/internlm2-chat-7b", "Shanghai_AI_Laboratory/internlm2-chat-7b"


@pytest.fixture
def hub(monkeypatch):
    server = FakeHub({HF_REPO: TINY_MODEL, MS_REPO: TINY_MODEL, "org/tiny": TINY_MODEL}, token="hub-token-123")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", server.url)
    # conftest keeps huggingface_hub offline (no hub is reachable here); this hub is, on 127.0.0.1.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # It writes what arrives in 10 MB chunks, more than the embedded model's weights: smaller, a cut resumes.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 256 << 10)
    yield server
    server.close()


def same_tree(a, b) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and \
        all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


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


@pytest.mark.parametrize("source, repo", [("huggingface", HF_REPO), ("modelscope", MS_REPO)])
def test_hub_download_by_short_name(hub, tmp_path, source, repo):
    progress = []
    m = ModelManager(model_source=source, token="hub-token-123", cache_dir=str(tmp_path / "cache"))
    path = m.download("internlm2-chat-7b", call_back=lambda done, total, name: progress.append((done, total)))
    assert path == str(tmp_path / "cache" / "internlm2-chat-7b")
    assert same_tree(TINY_MODEL, tmp_path / "cache" / "internlm2-chat-7b") and validate_model_path(path)
    total = sum(p.stat().st_size for p in TINY_MODEL.rglob("*") if p.is_file())
    assert progress[-1] == (total, total)
    # Which commit the folder holds is recorded beside it, for lineage (Hugging Face resolves main to a commit).
    commit = hub.commit(repo) if source == "huggingface" else "master"
    assert revision_of(path) == f"{source}:{repo}@{commit}"
    assert m.download("internlm2-chat-7b") == path  # now found in the cache
    assert ModelManager(model_source=source, token="hub-token-123",
                        cache_dir=str(tmp_path / "c2")).download("org/tiny") == str(tmp_path / "c2" / "tiny")


def test_wrong_token_and_unknown_repo_fail_cleanly(hub, tmp_path, caplog):
    m = ModelManager(model_source="huggingface", token="wrong", cache_dir=str(tmp_path))
    assert m.download("internlm2-chat-7b") is False
    assert "access denied (401)" in caplog.text and "wrong" not in caplog.text
    m = ModelManager(model_source="huggingface", token="hub-token-123", cache_dir=str(tmp_path))
    assert m.download("nobody/nothing") is False and "not found" in caplog.text
    assert m.download("not-in-the-table") is False and "short-name table" in caplog.text
    assert not validate_model_path(tmp_path / "nothing")


@pytest.mark.parametrize("source", ["huggingface", "modelscope"])
def test_interrupted_download_resumes_and_never_looks_complete(hub, tmp_path, source):
    """The connection drops halfway through the weights: the rest is asked for with a Range request (at once by
    huggingface_hub, which here meets an outage; by the next call for ModelScope). The failed attempt leaves
    nothing that looks like a model; the next one completes."""
    hub.cut_once.add("model.safetensors")
    hub.outage_after_cut = 1 if source == "huggingface" else 0
    half = (TINY_MODEL / "model.safetensors").stat().st_size // 2
    m = ModelManager(model_source=source, token="hub-token-123", cache_dir=str(tmp_path))
    assert m.download("internlm2-chat-7b") is False
    target, partial = tmp_path / "internlm2-chat-7b", tmp_path / "internlm2-chat-7b.partial"
    assert not target.exists() and (partial / INCOMPLETE_MARKER).exists()
    assert not validate_model_path(partial) and m.find_local("internlm2-chat-7b") is None
    if source == "huggingface":
        (asked,) = hub.ranges  # only the rest was asked for: from what had arrived, in whole chunks
        assert asked.startswith("bytes=") and 0 < int(asked[6:-1]) <= half
    else:
        kept = (partial / "model.safetensors.part").stat().st_size  # what arrived, in whole chunks
        assert 0 < kept <= half and hub.ranges == []
    assert m.download("internlm2-chat-7b") == str(target)
    if source == "modelscope":
        assert hub.ranges == [f"bytes={kept}-"]  # the second attempt asked only for the rest
    assert same_tree(TINY_MODEL, target) and not partial.exists()


@pytest.mark.parametrize("served, error", [
    (lambda b: bytes([b[0] ^ 1]) + b[1:], "config.json: sha256 mismatch; the partial file was removed"),
    (lambda b: b[:-7], "config.json: got {short} bytes, the hub lists {size}"),
])
def test_a_file_that_does_not_match_the_hubs_listing_is_never_used(hub, tmp_path, caplog, served, error):
    data = (TINY_MODEL / "config.json").read_bytes()
    hub.served_instead["config.json"] = served(data)
    m = ModelManager(model_source="huggingface", token="hub-token-123", cache_dir=str(tmp_path))
    assert m.download("internlm2-chat-7b") is False
    assert error.format(short=len(data) - 7, size=len(data)) in caplog.text
    target, partial = tmp_path / "internlm2-chat-7b", tmp_path / "internlm2-chat-7b.partial"
    assert not target.exists() and not (partial / "config.json").exists() and m.find_local("internlm2-chat-7b") is None
    hub.served_instead.clear()  # the hub is right again: the next attempt completes with the true file
    assert m.download("internlm2-chat-7b") == str(target) and same_tree(TINY_MODEL, target)


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


def test_s3_mirror_round_trip(stack, tmp_path):
    from tasks import storage
    from tasks.settings import Settings

    bucket = Settings.load().s3_bucket
    model = tmp_path / "big-model"
    shutil.copytree(TINY_MODEL, model)
    (model / "extra.bin").write_bytes(bytes(range(256)) * 50_000)  # 12.8 MB: several 5 MB parts
    uri = f"s3://{bucket}/mirror/big-model"
    manifest = upload_model(model, uri, chunk_mb=5)
    assert set(manifest["files"]) == {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()}
    head = storage.s3_client().head_object(Bucket=bucket, Key="mirror/big-model/extra.bin")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload in three parts
    path = ModelManager(model_source=f"s3://{bucket}/mirror", cache_dir=str(tmp_path / "cache")).download("big-model")
    assert path == str(tmp_path / "cache" / "big-model") and same_tree(model, tmp_path / "cache" / "big-model")
    storage.s3_client().put_object(Bucket=bucket, Key="mirror/big-model/extra.bin", Body=b"tampered")
    with pytest.raises(MirrorError, match="sha256 mismatch"):
        download_model(uri, tmp_path / "again")
    assert not (tmp_path / "again").exists()
    with pytest.raises(MirrorError, match="not a complete mirror"):
        download_model(f"s3://{bucket}/mirror/absent", tmp_path / "absent")


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
