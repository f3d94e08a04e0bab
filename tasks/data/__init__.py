"""Datasets (the contract's data side): formats, loading with located errors, preparation, converters.

``load_dataset(path, format=None)`` reads alpaca, sharegpt, OpenAI messages, text,
preference, triplet and rerank records from JSON, JSONL, CSV or Parquet, local or
``s3://``; a bad record raises ``DatasetError`` with ``path``, ``line`` and ``field``.
"""

from tasks.data.convert import to_flagembedding, to_llamafactory
from tasks.data.formats import FORMATS, SCHEMAS, DatasetError, detect, schema_text
from tasks.data.load import Dataset, Row, iter_dataset, load_alpaca, load_dataset
from tasks.data.prepare import PreparedDataset, content_hash, prepare, read_jsonl, render, split, write_jsonl

__all__ = ["FORMATS", "SCHEMAS", "Dataset", "DatasetError", "PreparedDataset", "Row", "content_hash",
           "detect", "iter_dataset", "load_alpaca", "load_dataset", "prepare", "read_jsonl", "render", "schema_text",
           "split", "to_flagembedding", "to_llamafactory", "write_jsonl"]
