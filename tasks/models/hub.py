"""What every hub download shares: where each hub is (``HF_ENDPOINT``, ``MODELSCOPE_ENDPOINT``), a file as the hub
lists it, and the check of a fetched file against that listing. The transfers are ``hf.py`` (through
``huggingface_hub``) and ``modelscope.py``; ``download.py`` runs one into a folder filled aside.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.files import sha256_file
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


def endpoint(source: str) -> str:
    return env(ENDPOINTS[source]).rstrip("/")


def verify(part: Path, f: HubFile) -> None:
    """The file matches the hub's listing: its size (else kept, to resume) and sha256 (else removed)."""
    size = part.stat().st_size
    if f.size is not None and size != f.size:
        raise HubError(f"{f.path}: got {size} bytes, the hub lists {f.size}; run the download again to resume")
    if f.sha256 and sha256_file(part) != f.sha256:
        part.unlink()
        raise HubError(f"{f.path}: sha256 mismatch; the partial file was removed")
