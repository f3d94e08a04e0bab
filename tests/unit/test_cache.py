"""Cache keys: content, not places or times; the checkout's revision; where work is done (the records in the bucket
are exercised on the real stack by tests/e2e/test_bucket_records.py and tests/e2e/test_resume.py)."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from tasks.services import cache
from tests.support.paths import REPO, TINY_MODEL


def content_hash(folder) -> str:
    """A model folder's fingerprint, computed here: every file's name and sha256, as ``cache.key`` digests parts."""
    files = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file()}
    return hashlib.sha256(json.dumps({"files": files}, sort_keys=True).encode()).hexdigest()[:24]


def test_a_model_fingerprint_is_its_content(tmp_path, fineflow_home):
    expected = content_hash(TINY_MODEL)
    assert cache.fingerprint(TINY_MODEL) == expected
    copy = tmp_path / "copy"
    shutil.copytree(TINY_MODEL, copy)
    assert cache.fingerprint(copy) == expected  # another place, the same files
    os.utime(copy / "config.json", ns=(1, 1))  # touched, not changed: hashed again, the same
    assert cache.fingerprint(copy) == expected
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert cache.fingerprint(copy) == content_hash(copy) != expected
    memo = fineflow_home / "cache" / "fingerprints.json"
    memo.write_text("{not json")  # a damaged memo is hashed over, and written again whole
    assert cache.fingerprint(TINY_MODEL) == expected and json.loads(memo.read_text())


def test_keys_follow_every_part_and_not_their_order():
    assert cache.key(a=1, b={"x": [1, 2]}) == cache.key(b={"x": [1, 2]}, a=1)
    assert cache.key(a=1, b={"x": [1, 2]}) != cache.key(a=1, b={"x": [2, 1]})
    assert cache.key(a=1, b={"x": [1, 2]}) == hashlib.sha256(b'{"a": 1, "b": {"x": [1, 2]}}').hexdigest()[:24]
    assert cache.key(model=Path("/m/tiny")) == cache.key(model="/m/tiny")  # a path is keyed as its text


def test_a_file_is_hashed_once_per_size_and_modification_time(tmp_path, fineflow_home):
    """The memo is trusted for a file whose size and modification time are unchanged (that is what saves hashing a
    large model again); hidden files (``.cache/`` of a hub download) are no part of the content."""
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "sub" / "weights.bin").write_bytes(b"w" * 100)
    (model / ".lock").write_text("hidden")
    expected = content_hash(model)  # with the hidden file
    visible = {"sub/weights.bin": hashlib.sha256(b"w" * 100).hexdigest()}
    assert cache.fingerprint(model) == cache.key(files=visible) != expected  # .lock left out
    memo_path = fineflow_home / "cache" / "fingerprints.json"
    memo = json.loads(memo_path.read_text())
    file = (model / "sub" / "weights.bin").resolve()
    stat = file.stat()
    assert memo[f"{file}:{stat.st_size}:{stat.st_mtime_ns}"] == visible["sub/weights.bin"]
    memo[f"{file}:{stat.st_size}:{stat.st_mtime_ns}"] = "remembered"
    memo_path.write_text(json.dumps(memo))
    assert cache.fingerprint(model) == cache.key(files={"sub/weights.bin": "remembered"})


def test_the_revision_is_the_commit_and_whether_tracked_files_changed(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True).stdout.strip()
    git("init", "-q")
    (repo / "a.py").write_text("a = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "a")
    monkeypatch.setattr(cache, "REPO_ROOT", repo)
    head = git("rev-parse", "HEAD")
    assert cache.git_revision() == {"code_commit": head, "code_dirty": "false"}
    (repo / "notes.txt").write_text("untracked files are not the code")
    assert cache.git_revision() == {"code_commit": head, "code_dirty": "false"}
    (repo / "a.py").write_text("a = 2\n")
    assert cache.git_revision() == {"code_commit": head, "code_dirty": "true"}
    monkeypatch.setattr(cache, "REPO_ROOT", tmp_path / "not-a-checkout")
    (tmp_path / "not-a-checkout").mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert cache.git_revision() == {"code_commit": "unknown", "code_dirty": "unknown"}


def test_work_of_one_key_is_done_in_one_folder(fineflow_home, monkeypatch, tmp_path):
    monkeypatch.setenv("FINEFLOW_HOME", str(tmp_path / "fresh"))  # runs/ does not exist yet
    path = cache.workdir("abc123")
    assert path == tmp_path / "fresh" / "runs" / "train-abc123" and path.is_dir()
    (path / "checkpoint-2").mkdir()
    assert cache.workdir("abc123") == path and (path / "checkpoint-2").is_dir()  # again: the same, kept


def test_the_code_version_hashes_each_file_with_its_name(tmp_path, monkeypatch):
    """Computed here independently: file names (relative, sorted) and bytes, a NUL between."""
    for rel in ("tasks/data/a.py", "tasks/prompter/b.py", "infra/envs/x.txt", "tasks/serving/rollout.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    monkeypatch.setattr(cache, "REPO_ROOT", tmp_path)
    digest = hashlib.sha256()
    for rel in ("infra/envs/x.txt", "tasks/data/a.py", "tasks/prompter/b.py"):
        digest.update(rel.encode() + b"\0" + (tmp_path / rel).read_bytes())
    assert cache.code_version() == digest.hexdigest()[:16]


def test_the_code_version_follows_the_recipe_code_only(tmp_path, monkeypatch):
    """A change to what a candidate depends on (data handling, prompters, recipes, evaluation, the pinned
    environments) is a new code version; a change elsewhere (serving) is not."""
    for pattern in (*cache.CODE, "tasks/serving/*.py"):
        for f in REPO.glob(pattern):
            (tmp_path / f.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, tmp_path / f.relative_to(REPO))
    monkeypatch.setattr(cache, "REPO_ROOT", tmp_path)
    before = cache.code_version()
    assert before == cache.code_version() and len(before) == 16
    with open(tmp_path / "tasks" / "serving" / "rollout.py", "a") as f:
        f.write("\n# serving only\n")
    assert cache.code_version() == before
    for changed in ("tasks/finetune/merge.py", "tasks/evaluate/gate.py", "tasks/inference/prompts.py"):
        with open(tmp_path / changed, "a") as f:
            f.write("\n# a change\n")
        assert cache.code_version() != before, changed
        before = cache.code_version()
