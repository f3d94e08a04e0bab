"""Downloading a model repository from a hub's file API, resumably, with progress and checksums.

Hugging Face: ``GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`` lists files, and
``GET {endpoint}/{repo}/resolve/{rev}/{path}`` serves one. ModelScope:
``GET {endpoint}/api/v1/models/{repo}/repo/files?Revision={rev}&Recursive=true`` and
``GET {endpoint}/api/v1/models/{repo}/repo?Revision={rev}&FilePath={path}``. The endpoints
come from ``HF_ENDPOINT`` and ``MODELSCOPE_ENDPOINT``.

Files land in ``<target>.partial/`` (marked incomplete); a partial file is continued with an
HTTP Range request. Only when every file is complete and verified is the directory renamed
to ``<target>``, so an interrupted download never leaves a directory that looks like a model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from tasks.models.local import filling, safe_relpath, sha256_file

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


def list_files(client: httpx.Client, source: str, repo: str, revision: str | None) -> list[HubFile]:
    base = endpoint(source)
    if source == "huggingface":
        rev = revision or "main"
        info = _get(client, f"{base}/api/models/{repo}/revision/{rev}", params={"blobs": "true"}).json()
        return [HubFile(s["rfilename"], s.get("size"), (s.get("lfs") or {}).get("sha256"),
                        f"{base}/{repo}/resolve/{rev}/{s['rfilename']}") for s in info.get("siblings", [])]
    rev = revision or "master"
    info = _get(client, f"{base}/api/v1/models/{repo}/repo/files",
                params={"Revision": rev, "Recursive": "true"}).json()
    files = (info.get("Data") or {}).get("Files") or []
    file_api = f"{base}/api/v1/models/{repo}/repo"
    return [HubFile(f["Path"], f.get("Size"), f.get("Sha256") or None,
                    str(httpx.URL(file_api, params={"Revision": rev, "FilePath": f["Path"]})))
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
    _verify(part, f)
    part.rename(dest)


def _verify(part: Path, f: HubFile) -> None:
    size = part.stat().st_size
    if f.size is not None and size != f.size:
        raise HubError(f"{f.path}: got {size} bytes, the hub lists {f.size}; run the download again to resume")
    if f.sha256 and sha256_file(part) != f.sha256:
        part.unlink()
        raise HubError(f"{f.path}: sha256 mismatch; the partial file was removed")


def download_repo(source: str, repo: str, target: Path, *, token: str | None = None, revision: str | None = None,
                  call_back: Callable | None = None, timeout: float = 60) -> Path:
    """Fetch every file of ``repo`` into ``target``; resumes what an earlier attempt left in ``target.partial``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with filling(target) as partial, httpx.Client(headers=headers, timeout=timeout, follow_redirects=True) as client:
        files = list_files(client, source, repo, revision)
        if not files:
            raise HubError(f"{source} repository {repo} lists no files")
        total = sum(f.size or 0 for f in files) or None
        done = sum((partial / safe_relpath(f.path)).stat().st_size for f in files
                   if (partial / safe_relpath(f.path)).exists())
        with tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=f"{source}:{repo}") as progress:
            for f in files:
                dest = partial / safe_relpath(f.path)
                if dest.exists():
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(dest.name + ".part")
                if part.exists():
                    progress.update(part.stat().st_size)
                _fetch(client, f, dest, progress, call_back)
    return target
