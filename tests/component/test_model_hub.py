"""ModelManager's hub downloads against a local stand-in hub (``tests/support/hub_server.py``, a real HTTP server
speaking both hubs' file APIs): short names, wrong tokens, a connection cut mid-file resumed, a file that does not
match the listing never used."""

import logging

import pytest

from tasks.models import INCOMPLETE_MARKER, ModelManager, validate_model_path
from tasks.models.local import revision_of
from tests.support.hub_server import FakeHub
from tests.support.models import same_tree
from tests.support.paths import TINY_MODEL

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
    # modelscope retries a dropped connection 5 times with a growing back-off; once here, so an outage outlasts it.
    import modelscope_hub._download

    monkeypatch.setattr(modelscope_hub._download, "DOWNLOAD_RETRY_TIMES", 1)
    yield server
    server.close()


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
    assert revision_of(path) == f"{source}:{repo}@{hub.commit(repo)}"
    client = {"huggingface": "hf_hub/", "modelscope": "modelscope_hub/"}[source]  # the vendor's own client
    assert any(client in agent for agent in hub.agents), hub.agents
    assert m.download("internlm2-chat-7b") == path  # now found in the cache
    assert ModelManager(model_source=source, token="hub-token-123",
                        cache_dir=str(tmp_path / "c2")).download("org/tiny") == str(tmp_path / "c2" / "tiny")


@pytest.mark.parametrize("source", ["huggingface", "modelscope"])
def test_wrong_token_and_unknown_repo_fail_cleanly(hub, tmp_path, caplog, source):
    caplog.set_level(logging.DEBUG)  # not even the clients' debug lines show the token
    m = ModelManager(model_source=source, token="wrong-token-456", cache_dir=str(tmp_path))
    assert m.download("internlm2-chat-7b") is False
    assert "access denied (401)" in caplog.text and "wrong-token-456" not in caplog.text
    m = ModelManager(model_source=source, token="hub-token-123", cache_dir=str(tmp_path))
    assert m.download("nobody/nothing") is False and "not found" in caplog.text
    assert m.download("not-in-the-table") is False and "short-name table" in caplog.text
    assert not validate_model_path(tmp_path / "nothing")


@pytest.mark.parametrize("source", ["huggingface", "modelscope"])
def test_interrupted_download_resumes_and_never_looks_complete(hub, tmp_path, source):
    """The connection drops halfway through the weights: each client asks at once for the rest with a Range
    request, meets an outage that outlasts its retries, and fails. That attempt leaves nothing that looks like a
    model; the next one completes (ModelScope's asking only for what is missing; huggingface_hub 2.4 fetches
    the file whole again)."""
    hub.cut_once.add("model.safetensors")
    hub.outage_after_cut = 1
    half = (TINY_MODEL / "model.safetensors").stat().st_size // 2
    m = ModelManager(model_source=source, token="hub-token-123", cache_dir=str(tmp_path))
    assert m.download("internlm2-chat-7b") is False
    target, partial = tmp_path / "internlm2-chat-7b", tmp_path / "internlm2-chat-7b.partial"
    assert not target.exists() and (partial / INCOMPLETE_MARKER).exists()
    assert not validate_model_path(partial) and m.find_local("internlm2-chat-7b") is None
    (asked,) = hub.ranges  # only the rest was asked for: from what had arrived, in whole chunks
    kept = int(asked.removeprefix("bytes=").removesuffix("-"))
    assert 0 < kept <= half
    assert m.download("internlm2-chat-7b") == str(target)
    assert same_tree(TINY_MODEL, target) and not partial.exists()
    if source == "modelscope":
        assert hub.ranges == [asked, asked]  # the second attempt, too, asked only for the rest
        assert set(hub.revisions) == {hub.commit(MS_REPO)}  # every file at the commit the branch was at


@pytest.mark.parametrize("served, error", [
    (lambda b: bytes([b[0] ^ 1]) + b[1:], "config.json: sha256 mismatch; the file was removed"),
    (lambda b: b[:-7], "config.json: got {short} bytes, the hub lists {size}; the file was removed"),
])
@pytest.mark.parametrize("source", ["huggingface", "modelscope"])
def test_a_file_that_does_not_match_the_hubs_listing_is_never_used(hub, tmp_path, caplog, served, error, source):
    data = (TINY_MODEL / "config.json").read_bytes()
    hub.served_instead["config.json"] = served(data)
    m = ModelManager(model_source=source, token="hub-token-123", cache_dir=str(tmp_path))
    assert m.download("internlm2-chat-7b") is False
    assert error.format(short=len(data) - 7, size=len(data)) in caplog.text
    target, partial = tmp_path / "internlm2-chat-7b", tmp_path / "internlm2-chat-7b.partial"
    assert not target.exists() and not (partial / "config.json").exists() and m.find_local("internlm2-chat-7b") is None
    hub.served_instead.clear()  # the hub is right again: the next attempt completes with the true file
    assert m.download("internlm2-chat-7b") == str(target) and same_tree(TINY_MODEL, target)


def test_modelscope_commit_is_the_newest_a_file_names():
    from tasks.models.modelscope import head_commit

    listing = [{"Path": "a", "Revision": "c1", "CommittedDate": 10}, {"Path": "b", "Revision": "c3",
               "CommittedDate": 30}, {"Path": "c", "Revision": "c2", "CommittedDate": 20}]
    assert head_commit(listing) == "c3"
    assert head_commit([{"Path": "a"}]) is None  # a listing without commits: the revision asked is recorded
