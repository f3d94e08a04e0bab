"""Converters: a validated ``Dataset`` into the files LLaMA-Factory and FlagEmbedding train on."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.data.formats import DatasetError
from tasks.data.load import Dataset

SHAREGPT_OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                        "assistant_tag": "assistant", "system_tag": "system", "observation_tag": "tool"}
# How LLaMA-Factory's dataset_info.json describes each format fineflow can hand it.
LLAMAFACTORY_INFO = {
    "alpaca": {"columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}},
    "sharegpt": {"formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system",
                                                       "tools": "tools"}},
    "openai": {"formatting": "sharegpt", "columns": {"messages": "messages", "tools": "tools"},
               "tags": SHAREGPT_OPENAI_TAGS},
    "preference": {"ranking": True, "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen",
                                                "rejected": "rejected"}},
    "text": {"columns": {"prompt": "text"}},
}


def to_llamafactory(dataset: Dataset, out_dir: str | Path, name: str = "fineflow") -> Path:
    """Write ``<name>.json`` into ``out_dir`` and describe it in ``dataset_info.json`` (added to the datasets
    already described there, so a train and a validation set can share a ``dataset_dir``); returns ``out_dir``."""
    if dataset.format not in LLAMAFACTORY_INFO:
        raise DatasetError(dataset.path, None, None, f"LLaMA-Factory does not train on {dataset.format} records; "
                                                     f"convertible: {', '.join(LLAMAFACTORY_INFO)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(dataset.records, ensure_ascii=False), encoding="utf-8")
    info_path = out / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    described = dict(LLAMAFACTORY_INFO[dataset.format])
    present = {key for record in dataset.records for key in record}
    # LLaMA-Factory reads every mapped column: map only the optional ones (input, system, tools) that occur.
    described["columns"] = {k: v for k, v in described["columns"].items() if v in present}
    info[name] = {"file_name": f"{name}.json", **described}
    info_path.write_text(json.dumps(info, indent=1), encoding="utf-8")
    return out


def _rerank_groups(dataset: Dataset, threshold: float) -> list[dict]:
    groups: dict[str, dict] = {}
    for record in dataset.records:
        group = groups.setdefault(record["query"], {"query": record["query"], "pos": [], "neg": []})
        group["pos" if record["label"] >= threshold else "neg"].append(record["passage"])
    return [g for g in groups.values() if g["pos"]]


def to_flagembedding(dataset: Dataset, path: str | Path, positive_threshold: float = 0.5) -> Path:
    """Write FlagEmbedding's JSONL (``{query, pos, neg}``) from triplets, or from rerank pairs grouped by query
    (a label of at least ``positive_threshold`` is positive; queries without a positive are left out)."""
    if dataset.format == "triplets":
        rows = [{"query": r["query"], "pos": r["pos"], "neg": r.get("neg", []),
                 **({"prompt": r["prompt"]} if r.get("prompt") else {})} for r in dataset.records]
    elif dataset.format == "rerank":
        rows = _rerank_groups(dataset, positive_threshold)
        if not rows:
            raise DatasetError(dataset.path, None, "label", f"no query has a passage labelled >= "
                                                            f"{positive_threshold}; nothing to train on")
    else:
        raise DatasetError(dataset.path, None, None, f"FlagEmbedding trains on triplets or rerank pairs, "
                                                     f"not {dataset.format} records")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
