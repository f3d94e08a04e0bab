"""Cache keys: content, not places or times (the records in the bucket are exercised on the real stack by
tests/test_resume.py)."""

import json
import os
import shutil

from tasks import cache

from conftest import TINY_MODEL


def test_a_model_fingerprint_is_its_content(tmp_path, fineflow_home):
    copy = tmp_path / "copy"
    shutil.copytree(TINY_MODEL, copy)
    assert cache.fingerprint(copy) == cache.fingerprint(TINY_MODEL)  # another place, the same files
    os.utime(copy / "config.json", ns=(1, 1))  # touched, not changed: hashed again, the same
    assert cache.fingerprint(copy) == cache.fingerprint(TINY_MODEL)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert cache.fingerprint(copy) != cache.fingerprint(TINY_MODEL)
    (fineflow_home / "cache" / "fingerprints.json").write_text("{not json")  # a damaged memo is hashed over
    assert cache.fingerprint(TINY_MODEL) == cache.fingerprint(TINY_MODEL)


def test_keys_follow_every_part_and_not_their_order():
    assert cache.key(a=1, b={"x": [1, 2]}) == cache.key(b={"x": [1, 2]}, a=1)
    assert cache.key(a=1, b={"x": [1, 2]}) != cache.key(a=1, b={"x": [2, 1]})
    assert cache.code_version() == cache.code_version() and len(cache.code_version()) == 16
