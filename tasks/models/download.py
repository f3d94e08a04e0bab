"""Downloading a model repository from a hub, resumably, with progress, checksums and the commit recorded.

Whatever the hub (``hf.py``, ``modelscope.py``), files land in ``<target>.partial/`` (marked incomplete), each is
checked against the hub's listing (size, sha256), and only when every file is there and verified is the directory
renamed to ``<target>``, so an interrupted download never leaves a directory that looks like a model. Which commit
it holds is recorded beside it (``local.revision_record``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tasks.files import filling, write_atomic
from tasks.models import hf, modelscope
from tasks.models.hub import HubError, endpoint
from tasks.models.local import revision_record

# How each hub's files are fetched: (repo, partial folder, endpoint, token=, revision=, call_back=, timeout=) -> the
# commit fetched. huggingface_hub is imported only when a download needs it.
TRANSFERS: dict[str, Callable[..., str]] = {"huggingface": hf.transfer, "modelscope": modelscope.transfer}


def download_repo(source: str, repo: str, target: Path, *, token: str | None = None, revision: str | None = None,
                  call_back: Callable | None = None, timeout: float = 60) -> Path:
    """Fetch every file of ``repo`` into ``target``; resumes what an earlier attempt left in ``target.partial``."""
    transfer = TRANSFERS.get(source)
    if transfer is None:
        raise HubError(f"unknown hub {source!r} (known: {', '.join(TRANSFERS)})")
    with filling(target) as partial:
        commit = transfer(repo, partial, endpoint(source), token=token, revision=revision, call_back=call_back,
                          timeout=timeout)
    # For lineage: which commit the folder holds.
    write_atomic(revision_record(target), json.dumps({"source": source, "repo": repo, "commit": commit}))
    return target
