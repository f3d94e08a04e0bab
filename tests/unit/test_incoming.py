"""A pipeline's data home takes dataset files only, and says which file it refused (the bucket side is in
tests/e2e/test_bucket_records.py)."""

import re

import pytest

from tasks.data.readers import SUFFIXES
from tasks.pipeline import incoming


def test_only_a_dataset_file_that_exists_is_pushed(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a dataset")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(notes))}: a dataset file ends in "
                                         rf"{re.escape(', '.join(SUFFIXES))}$"):
        incoming.push(notes, "quickstart")
    missing = tmp_path / "DATA.JSONL"  # an upper-case suffix is a dataset's: refused only for being absent
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(missing))}: file not found$"):
        incoming.push(missing, "quickstart")
