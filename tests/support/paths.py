"""Where the tests find the project's files: the repository, the embedded tiny model and the bundled dataset."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = REPO / "infra" / "models" / "tiny-llama"
DATASET = REPO / "infra" / "datasets" / "word_ops.json"
