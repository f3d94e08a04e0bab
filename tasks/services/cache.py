"""Work keyed by what it depends on: skipped when unchanged, resumed after a crash.

A step's *key* hashes its inputs: the base model's content (``fingerprint``), the dataset's hash, the backend
and the parameters the config gave it, and the recipe's code (``code_version``). Results are small JSON
records in the bucket (``s3://<bucket>/cache/<kind>/<key>.json``), so a re-run on another worker, or after a
worker restart, finds them; the files they point to are in the bucket too. Training works in
``$FINEFLOW_HOME/runs/train-<key>/``, so a re-run after a crash finds its checkpoints; the ``train`` slot of the key
(``coordination.slot``) keeps two runs of the same inputs, on any machines, from training it twice.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from tasks import files
from tasks.services import storage
from tasks.settings import REPO_ROOT, Settings, state_dir


def key(**parts: Any) -> str:
    """A stable digest of ``parts`` (JSON-serialisable)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def fingerprint(path: str | Path) -> str:
    """The content hash of a model folder: every file's name and sha256. Files are hashed once per (size,
    modification time), remembered in ``$FINEFLOW_HOME/cache/fingerprints.json``."""
    root = Path(path).resolve()
    memo_path = state_dir() / "cache" / "fingerprints.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: hash again
        memo = {}
    digests = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        stat = file.stat()
        memo_key = f"{file}:{stat.st_size}:{stat.st_mtime_ns}"
        memo[memo_key] = memo.get(memo_key) or files.sha256_file(file)
        digests[file.relative_to(root).as_posix()] = memo[memo_key]
    files.write_atomic(memo_path, json.dumps(memo))  # whole or not at all: runs at once may write it
    return key(files=digests)


# The code a candidate depends on: how data is read, prepared and rendered, every recipe and training script,
# merging, scoring, and the pinned framework environments. Any change to them is a new key (conservative:
# a change to one recipe retrains them all).
CODE = ("tasks/data/*.py", "tasks/prompter/*.py", "tasks/finetune/*.py", "tasks/inference/*.py", "tasks/evaluate/*.py",
        "tasks/models/size.py", "tasks/services/mlflow_model.py", "infra/envs/*.txt")


def code_version() -> str:
    """A hash of the code in ``CODE`` (file names and bytes)."""
    digest = hashlib.sha256()
    for file in sorted({f for pattern in CODE for f in REPO_ROOT.glob(pattern)}):
        digest.update(file.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def git_revision() -> dict[str, str]:
    """The checkout's commit and whether its tracked files differ from it ("unknown" outside a git checkout)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()
    try:
        commit, changes = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"code_commit": "unknown", "code_dirty": "unknown"}
    return {"code_commit": commit, "code_dirty": "true" if changes else "false"}


def _uri(kind: str, cache_key: str) -> str:
    return f"s3://{Settings.load().s3_bucket}/cache/{kind}/{cache_key}.json"


def get(kind: str, cache_key: str) -> dict | None:
    """The record stored under ``kind/key``, or None."""
    bucket, object_key = storage.split_uri(_uri(kind, cache_key))
    try:
        body = storage.s3_client().get_object(Bucket=bucket, Key=object_key)["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return None
        raise
    return json.loads(body)


def put(kind: str, cache_key: str, record: dict) -> None:
    """Store ``record``; written last, once what it points to is in place, so a record is never half true."""
    bucket, object_key = storage.split_uri(_uri(kind, cache_key))
    storage.s3_client().put_object(Bucket=bucket, Key=object_key, Body=json.dumps(record).encode(),
                                   ContentType="application/json")


def workdir(cache_key: str) -> Path:
    """Where the work of ``cache_key`` is done: the same directory for every run of the same inputs."""
    path = state_dir() / "runs" / f"train-{cache_key}"
    path.mkdir(parents=True, exist_ok=True)
    return path


