"""Finding models on disk: a local path, or a name under the search roots (``LAZYLLM_MODEL_PATH``,
colon-separated), the cache (``LAZYLLM_MODEL_CACHE_DIR``, default ``~/.lazyllm/model``) and the
project's embedded models (``infra/models``)."""

from __future__ import annotations

import os
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
