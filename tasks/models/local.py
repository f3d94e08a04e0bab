"""Finding models on disk: a local path, or a name under the search roots (``LAZYLLM_MODEL_PATH``,
colon-separated), the cache (``LAZYLLM_MODEL_CACHE_DIR``, default ``~/.lazyllm/model``) and the
project's embedded models (``infra/models``)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from tasks.settings import REPO_ROOT

EMBEDDED_MODELS = REPO_ROOT / "infra" / "models"
WEIGHT_SUFFIXES = (".pt", ".bin", ".safetensors")
INCOMPLETE_MARKER = ".fineflow-incomplete"  # in a directory that a download is still filling


class ModelRef(BaseModel):
    name: str
    path: str


class ModelNotFoundError(FileNotFoundError):
    pass


def validate_model_path(model_path: str | Path) -> bool:
    """True when the directory holds weights (.pt, .bin, .safetensors) and no download is still filling it."""
    path = Path(model_path)
    if not path.is_dir() or (path / INCOMPLETE_MARKER).exists():
        return False
    return any(p.suffix in WEIGHT_SUFFIXES for p in path.rglob("*") if p.is_file())


def search_roots(model_path: str | None = None, cache_dir: str | None = None) -> list[Path]:
    roots = [p for p in (model_path or os.environ.get("LAZYLLM_MODEL_PATH", "")).split(":") if p]
    cache = cache_dir or os.environ.get("LAZYLLM_MODEL_CACHE_DIR", "~/.lazyllm/model")
    return [Path(p).expanduser() for p in roots] + [Path(cache).expanduser(), EMBEDDED_MODELS]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_relpath(path: str) -> Path:
    """``path`` as a relative path that stays inside the directory it is joined to."""
    rel = Path(path)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"unsafe file path {path!r} in a model listing")
    return rel


@contextmanager
def filling(target: Path) -> Iterator[Path]:
    """A ``<target>.partial`` directory, marked incomplete, that becomes ``target`` only if the block succeeds;
    after a failure it stays, so the next attempt continues from what is there."""
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    (partial / INCOMPLETE_MARKER).touch()
    yield partial
    (partial / INCOMPLETE_MARKER).unlink()
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)


def revision_record(model_dir: str | Path) -> Path:
    """Where a hub download records what it fetched (hub, repository, commit): beside the folder, not in it, so
    the folder holds exactly the repository's files."""
    model = Path(model_dir)
    return model.with_name(model.name + ".revision.json")


def revision_of(model_dir: str | Path) -> str:
    """Which revision of a model a folder holds: ``<hub>:<repo>@<commit>`` for a hub download, else the folder's
    content hash (``sha256:...``, every file's name and bytes)."""
    import json

    record = revision_record(model_dir)
    if record.is_file():
        r = json.loads(record.read_text(encoding="utf-8"))
        return f"{r['source']}:{r['repo']}@{r['commit']}"
    from tasks.cache import fingerprint

    return f"sha256:{fingerprint(model_dir)}"
