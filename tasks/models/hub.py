"""Downloading a model repository from a hub, resumably, with progress, checksums and the commit recorded.

Hugging Face goes through ``huggingface_hub`` (``tasks/models/hf.py``). ModelScope through its file API:
``GET {endpoint}/api/v1/models/{repo}/repo/files?Revision={rev}&Recursive=true`` lists files and
``GET {endpoint}/api/v1/models/{repo}/repo?Revision={rev}&FilePath={path}`` serves one; a partial file is
continued with an HTTP Range request. The endpoints come from ``HF_ENDPOINT`` and ``MODELSCOPE_ENDPOINT``.

Whatever the hub, files land in ``<target>.partial/`` (marked incomplete), each is checked against the hub's
listing (size, sha256), and only when every file is there and verified is the directory renamed to ``<target>``,
so an interrupted download never leaves a directory that looks like a model. Which commit it holds is recorded
beside it (``local.revision_record``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from tasks.models.local import filling, revision_record, safe_relpath, sha256_file

ENDPOINTS = {"huggingface": ("HF_ENDPOINT", "https://huggingface.co"),
             "modelscope": ("MODELSCOPE_ENDPOINT", "https://www.modelscope.cn")}
CHUNK = 1 << 20


class HubError(RuntimeError):
    """A hub answered with an error, or a file did not match its listing."""


@dataclass
class HubFile:
    path: str
    size: int | None
    sha256: str | None
    url: str


def endpoint(source: str) -> str:
    var, default = ENDPOINTS[source]
    return os.environ.get(var, default).rstrip("/")


def _get(client: httpx.Client, url: str, **kw) -> httpx.Response:
    response = client.get(url, **kw)
    if response.status_code in (401, 403):
        raise HubError(f"{url}: access denied ({response.status_code}); check the token")
    if response.status_code == 404:
        raise HubError(f"{url}: not found")
    response.raise_for_status()
    return response


def list_files(client: httpx.Client, repo: str, revision: str) -> list[HubFile]:
    """A ModelScope repository's files at ``revision`` (its listing names the revision, no commit)."""
    base = endpoint("modelscope")
    info = _get(client, f"{base}/api/v1/models/{repo}/repo/files",
                params={"Revision": revision, "Recursive": "true"}).json()
    files = (info.get("Data") or {}).get("Files") or []
    file_api = f"{base}/api/v1/models/{repo}/repo"
    return [HubFile(f["Path"], f.get("Size"), f.get("Sha256") or None,
                    str(httpx.URL(file_api, params={"Revision": revision, "FilePath": f["Path"]})))
            for f in files if f.get("Type", "blob") == "blob"]


def _fetch(client: httpx.Client, f: HubFile, dest: Path, progress: tqdm, call_back: Callable | None) -> None:
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if f.size is not None and have > f.size:
        part.unlink()
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", f.url, headers=headers, follow_redirects=True) as response:
        if response.status_code in (401, 403):
            raise HubError(f"{f.url}: access denied ({response.status_code}); check the token")
        if response.status_code != 416:  # 416: the part file is already whole
            response.raise_for_status()
            mode = "ab" if have and response.status_code == 206 else "wb"
            if mode == "wb" and have:
                progress.update(-have)
                have = 0
            with open(part, mode) as out:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    progress.update(len(chunk))
                    if call_back:
                        call_back(progress.n, progress.total, f.path)
    verify(part, f)
    part.rename(dest)


def verify(part: Path, f: HubFile) -> None:
    """The file matches the hub's listing: its size (else kept, to resume) and sha256 (else removed)."""
    size = part.stat().st_size
    if f.size is not None and size != f.size:
        raise HubError(f"{f.path}: got {size} bytes, the hub lists {f.size}; run the download again to resume")
    if f.sha256 and sha256_file(part) != f.sha256:
        part.unlink()
        raise HubError(f"{f.path}: sha256 mismatch; the partial file was removed")


def modelscope_transfer(repo: str, partial: Path, base: str, *, token: str | None, revision: str | None,
                        call_back: Callable | None, timeout: float) -> str:
    """Fetch every file of a ModelScope ``repo`` into ``partial``; returns the revision fetched."""
    rev = revision or "master"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(headers=headers, timeout=timeout, follow_redirects=True) as client:
        files = list_files(client, repo, rev)
        if not files:
            raise HubError(f"modelscope repository {repo} lists no files")
        total = sum(f.size or 0 for f in files) or None
        done = sum((partial / safe_relpath(f.path)).stat().st_size for f in files
                   if (partial / safe_relpath(f.path)).exists())
        with tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=f"modelscope:{repo}") as progress:
            for f in files:
                dest = partial / safe_relpath(f.path)
                if dest.exists():
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(dest.name + ".part")
                if part.exists():
                    progress.update(part.stat().st_size)
                _fetch(client, f, dest, progress, call_back)
    return rev


def transfers() -> dict[str, Callable[..., str]]:
    """How each hub's files are fetched: (repo, partial folder, endpoint, token=, revision=, call_back=, timeout=)
    -> the commit fetched. ``huggingface_hub`` is imported only when a download needs it."""
    from tasks.models.hf import transfer as huggingface

    return {"huggingface": huggingface, "modelscope": modelscope_transfer}


def download_repo(source: str, repo: str, target: Path, *, token: str | None = None, revision: str | None = None,
                  call_back: Callable | None = None, timeout: float = 60) -> Path:
    """Fetch every file of ``repo`` into ``target``; resumes what an earlier attempt left in ``target.partial``."""
    transfer = transfers().get(source)
    if transfer is None:
        raise HubError(f"unknown hub {source!r} (known: huggingface, modelscope)")
    with filling(target) as partial:
        commit = transfer(repo, partial, endpoint(source), token=token, revision=revision,
                                   call_back=call_back, timeout=timeout)
    record = revision_record(target)  # for lineage: which commit the folder holds
    aside = record.with_name(record.name + ".partial")
    aside.write_text(json.dumps({"source": source, "repo": repo, "commit": commit}), encoding="utf-8")
    aside.replace(record)
    return target
