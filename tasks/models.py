"""Finding models: the seam of the contract's ``ModelManager``.

This resolves a local path or a name under the search roots (``LAZYLLM_MODEL_PATH``,
colon-separated), the cache (``LAZYLLM_MODEL_CACHE_DIR``, default ``~/.lazyllm/model``)
and the project's embedded models (``infra/models``).  Hub downloads, the short-name
table and model types are the subject of the ModelManager issue.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from tasks.settings import REPO_ROOT

EMBEDDED_MODELS = REPO_ROOT / "infra" / "models"
WEIGHT_SUFFIXES = (".pt", ".bin", ".safetensors")


class ModelRef(BaseModel):
    name: str
    path: str


class ModelNotFoundError(FileNotFoundError):
    pass


def validate_model_path(model_path: str | Path) -> bool:
    """True when the directory holds weights (.pt, .bin, .safetensors)."""
    path = Path(model_path)
    return path.is_dir() and any(p.suffix in WEIGHT_SUFFIXES for p in path.rglob("*") if p.is_file())


def search_roots(model_path: str | None = None, cache_dir: str | None = None) -> list[Path]:
    roots = [p for p in (model_path or os.environ.get("LAZYLLM_MODEL_PATH", "")).split(":") if p]
    cache = cache_dir or os.environ.get("LAZYLLM_MODEL_CACHE_DIR", "~/.lazyllm/model")
    return [Path(p).expanduser() for p in roots] + [Path(cache).expanduser(), EMBEDDED_MODELS]


def resolve_model(model: str, model_path: str | None = None, cache_dir: str | None = None) -> ModelRef:
    """A local directory with weights for ``model`` (a path or a name), or a clear error."""
    if not model or ".." in Path(model).parts:
        raise ValueError(f"invalid model name {model!r}")
    candidates = [Path(model).expanduser()] if os.path.isabs(model) or Path(model).exists() else []
    candidates += [root / model for root in search_roots(model_path, cache_dir)]
    for path in candidates:
        if validate_model_path(path):
            return ModelRef(name=Path(model).name, path=str(path.resolve()))
    looked = ", ".join(str(p) for p in candidates)
    raise ModelNotFoundError(f"model {model!r} not found (looked in: {looked}); no model hub is configured")
