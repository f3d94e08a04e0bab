"""Finish an encoder FlagEmbedding trained: drop its ``checkpoint-*`` folders (optimizer state: the finished
weights are beside them) and, for an embedder, write the sentence-transformers layout (``modules.json``,
pooling, normalisation).

FlagEmbedding saves the bare transformer; its pooling (``cls``, ``mean`` or ``last_token``) and whether it
normalises were training arguments. Written down beside the weights, every server (the built-in one,
Infinity, sentence-transformers in-process) pools the model the way it was trained.

    python -m tasks.finetune.st_layout --model DIR --pooling mean --normalize --max-seq-length 256
    python -m tasks.finetune.st_layout --model DIR          # a reranker: checkpoints dropped, no layout
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from tasks.servers.embedders import POOLING_MODES


def write_layout(model_dir: str | Path, pooling: str, normalize: bool, max_seq_length: int) -> None:
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {pooling!r}")
    model = Path(model_dir)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (model / "2_Normalize").mkdir(exist_ok=True)
    (model / "1_Pooling").mkdir(exist_ok=True)
    pooling_config = {"word_embedding_dimension": config["hidden_size"],
                      **{mode: name == pooling for name, mode in POOLING_MODES.items()}}
    (model / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config, indent=1), encoding="utf-8")
    (model / "modules.json").write_text(json.dumps(modules, indent=1), encoding="utf-8")
    (model / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}), encoding="utf-8")


def drop_checkpoints(model_dir: str | Path) -> list[str]:
    dropped = sorted(p.name for p in Path(model_dir).glob("checkpoint-*") if p.is_dir())
    for name in dropped:
        shutil.rmtree(Path(model_dir) / name)
    return dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--pooling", choices=sorted(POOLING_MODES), help="an embedder's pooling (none: a reranker)")
    parser.add_argument("--normalize", action="store_true")
    parser.add_argument("--max-seq-length", type=int, default=512)
    args = parser.parse_args()
    if dropped := drop_checkpoints(args.model):
        print(f"dropped {', '.join(dropped)} from {args.model}")
    if args.pooling:
        write_layout(args.model, args.pooling, args.normalize, args.max_seq_length)
        print(f"sentence-transformers layout written into {args.model} ({args.pooling} pooling"
              f"{', normalized' if args.normalize else ''})")


if __name__ == "__main__":
    main()
