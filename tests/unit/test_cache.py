"""Cache keys: content, not places or times (the records in the bucket are exercised on the real stack by
tests/e2e/test_resume.py)."""

import hashlib
import json
import os
import shutil

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
