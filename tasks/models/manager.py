"""``ModelManager`` (the contract's): find a model locally, or fetch it from a hub or an S3 mirror; a GGUF model
(``tasks.models.gguf``) is converted once into a checkpoint in the cache."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import httpx

from tasks.masking import register_secret
from tasks.models import gguf
from tasks.models.download import download_repo
from tasks.models.hub import HubError
from tasks.models.local import search_roots, validate_model_path
from tasks.models.mirror import MirrorError, download_model
from tasks.models.types import get_model_prompt_keys, get_model_type, hub_repo
from tasks.settings import env

log = logging.getLogger(__name__)
SOURCES = ("huggingface", "modelscope")
_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


class ModelManager:
    """Searches ``model_path`` roots, then ``cache_dir``, then downloads from ``model_source``
    (``huggingface``, ``modelscope`` or an ``s3://bucket/prefix`` mirror) into ``cache_dir``."""

    get_model_type = staticmethod(get_model_type)
    get_model_prompt_keys = staticmethod(get_model_prompt_keys)
    validate_model_path = staticmethod(validate_model_path)

    def __init__(self, model_source: str | None = None, token: str | None = None, model_path: str | None = None,
                 cache_dir: str | None = None):
        source = model_source or env("LAZYLLM_MODEL_SOURCE")
        if source not in SOURCES and not source.startswith("s3://"):
            raise ValueError(f"model_source must be one of {', '.join(SOURCES)} or an s3:// mirror, got {source!r}")
        self.model_source = source
        self.token = token or env("LAZYLLM_MODEL_SOURCE_TOKEN")
        register_secret(self.token)  # masked in logs and errors wherever it shows
        self.model_path = model_path if model_path is not None else env("LAZYLLM_MODEL_PATH")
        self.cache_dir = Path(cache_dir or env("LAZYLLM_MODEL_CACHE_DIR")).expanduser()

    def __repr__(self) -> str:  # never shows the token
        return f"<ModelManager source={self.model_source} cache_dir={self.cache_dir}>"

    @staticmethod
    def check_name(model: str) -> None:
        if not _NAME.match(model) or ".." in model.split("/"):
            raise ValueError(f"invalid model name {model!r}: use a short name, org/name or an absolute path")

    def _names(self, model: str) -> list[str]:
        names = [model, Path(model).name]
        if self.model_source in SOURCES:
            try:
                names.append(Path(hub_repo(model, self.model_source)).name)
            except ValueError:
                pass
        return list(dict.fromkeys(names))

    def find_local(self, model: str) -> str | None:
        """The local directory holding ``model``: an absolute path, or a name under the search roots."""
        if os.path.isabs(model):
            return str(Path(model)) if validate_model_path(model) else None
        self.check_name(model)
        for root in search_roots(self.model_path, str(self.cache_dir)):
            for name in self._names(model):
                if validate_model_path(root / name):
                    return str((root / name).resolve())
        return None

    def download(self, model: str = "", call_back: Callable | None = None) -> str | bool:
        """The local path of ``model``, downloading it into ``cache_dir`` if needed; False if it cannot be had."""
        if not model:
            return False
        try:
            if (source := gguf.gguf_source(model)) is not None:
                return str(gguf.convert(source, self.cache_dir))
        except gguf.GGUFError as e:
            log.error("cannot use %s: %s", model, e)
            return False
        found = self.find_local(model)
        if found or os.path.isabs(model):
            return found or False
        try:
            if self.model_source.startswith("s3://"):
                target = self.cache_dir / Path(model).name
                download_model(f"{self.model_source.rstrip('/')}/{model}", target)
            else:
                repo = hub_repo(model, self.model_source)
                target = self.cache_dir / Path(repo).name
                download_repo(self.model_source, repo, target, token=self.token, call_back=call_back)
        except (HubError, MirrorError, httpx.HTTPError, ValueError, OSError) as e:
            log.error("cannot download %s from %s: %s", model, self.model_source, e)
            return False
        if not validate_model_path(target):
            log.error("%s from %s holds no weights (.pt, .bin, .safetensors)", model, self.model_source)
            return False
        return str(target)
