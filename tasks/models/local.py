"""Finding models on disk: a local path, or a name under the search roots (``LAZYLLM_MODEL_PATH``,
colon-separated), the cache (``LAZYLLM_MODEL_CACHE_DIR``, default ``~/.lazyllm/model``) and the
project's embedded models (``infra/models``)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from tasks.files import INCOMPLETE_MARKER
from tasks.services.cache import fingerprint
from tasks.settings import REPO_ROOT, env

EMBEDDED_MODELS = REPO_ROOT / "infra" / "models"
# What counts as weights: PyTorch and safetensors checkpoints, GGUF files, ONNX models (OCR, piper voices).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".onnx")


class ModelRef(BaseModel):
    name: str
    path: str


class ModelNotFoundError(FileNotFoundError):
    pass


def holds_weights(model_path: str | Path | None) -> bool:
    """Whether ``model_path`` is a model folder: it holds weights (``WEIGHT_SUFFIXES``, at any depth, a repository
    may keep them in a subfolder) outside training checkpoints (``checkpoint-*``: a trainer's state, not a model),
    and no download is still filling it. The one check, for finding, downloading and serving models."""
    if not model_path:
        return False
    path = Path(model_path)
    if not path.is_dir() or (path / INCOMPLETE_MARKER).exists():
        return False
    for file in path.rglob("*"):
        folders = file.relative_to(path).parts[:-1]
        if file.suffix in WEIGHT_SUFFIXES and file.is_file() and not any(d.startswith("checkpoint-") for d in folders):
            return True
    return False


validate_model_path = holds_weights  # the contract's name (ModelManager.validate_model_path)


def search_roots(model_path: str | None = None, cache_dir: str | None = None) -> list[Path]:
    roots = [p for p in (model_path or env("LAZYLLM_MODEL_PATH")).split(":") if p]
    cache = cache_dir or env("LAZYLLM_MODEL_CACHE_DIR")
    return [Path(p).expanduser() for p in roots] + [Path(cache).expanduser(), EMBEDDED_MODELS]


def safe_relpath(path: str) -> Path:
    """``path`` as a relative path that stays inside the directory it is joined to."""
    rel = Path(path)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"unsafe file path {path!r} in a model listing")
    return rel


def revision_record(model_dir: str | Path) -> Path:
    """Where a hub download records what it fetched (hub, repository, commit): beside the folder, not in it, so
    the folder holds exactly the repository's files."""
    model = Path(model_dir)
    return model.with_name(model.name + ".revision.json")


def revision_of(model_dir: str | Path) -> str:
    """Which revision of a model a folder holds: ``<hub>:<repo>@<commit>`` for a hub download, else the folder's
    content hash (``sha256:...``, every file's name and bytes)."""
    record = revision_record(model_dir)
    if record.is_file():
        r = json.loads(record.read_text(encoding="utf-8"))
        return f"{r['source']}:{r['repo']}@{r['commit']}"
    return f"sha256:{fingerprint(model_dir)}"
