"""What every hub download shares: where each hub is (``HF_ENDPOINT``, ``MODELSCOPE_ENDPOINT``), a file as the hub
lists it, the check of a fetched file against that listing, and the walk over a listing with progress. The
transfers are ``hf.py`` (through ``huggingface_hub``) and ``modelscope.py`` (through ``modelscope``); ``download.py``
runs one into a folder filled aside.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tasks.files import sha256_file
from tasks.models.local import safe_relpath
from tasks.settings import env

ENDPOINTS = {"huggingface": "HF_ENDPOINT", "modelscope": "MODELSCOPE_ENDPOINT"}  # their defaults: tasks.settings


class HubError(RuntimeError):
    """A hub answered with an error, or a file did not match its listing."""


@dataclass
class HubFile:
    path: str
    size: int | None
    sha256: str | None
    url: str


def answer_error(what: str, status: int | None, e: Exception) -> HubError:
    """A hub's refusal in one line: denied (check the token), not found, or the client's own error."""
    if status in (401, 403):
        return HubError(f"{what}: access denied ({status}); check the token")
    if status == 404:
        return HubError(f"{what}: not found")
    return HubError(f"{what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def endpoint(source: str) -> str:
    return env(ENDPOINTS[source]).rstrip("/")


def verify(path: Path, f: HubFile) -> None:
    """The fetched file matches the hub's listing (size, then sha256); one that does not is removed, never used."""
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        problem = f"got {size} bytes, the hub lists {f.size}"
    elif f.sha256 and sha256_file(path) != f.sha256:
        problem = "sha256 mismatch"
    else:
        return
    path.unlink()
    raise HubError(f"{f.path}: {problem}; the file was removed (the next attempt fetches it again)")


def fetch_listed(files: list[HubFile], partial: Path, fetch: Callable[[HubFile], None], *, desc: str,
                 call_back: Callable | None) -> None:
    """Each listed file not yet in ``partial`` fetched by ``fetch`` (the hub's client, writing it there), then
    checked against the listing (one that differs is removed, never used), with a progress bar over the whole
    repository and ``call_back(done_bytes, total_bytes, file)``. The clients' own state (``partial/.cache``: resume
    and lock files) goes once every file is in."""
    total = sum(f.size or 0 for f in files) or None
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc) as progress:
        for f in files:
            dest = partial / safe_relpath(f.path)
            if not dest.exists():
                fetch(f)
            verify(dest, f)
            progress.update(dest.stat().st_size)
            if call_back:
                call_back(progress.n, progress.total, f.path)
    shutil.rmtree(partial / ".cache", ignore_errors=True)
