"""The ModelScope transfer, through its file API: ``GET {endpoint}/api/v1/models/{repo}/repo/files?Revision={rev}
&Recursive=true`` lists files and ``GET {endpoint}/api/v1/models/{repo}/repo?Revision={rev}&FilePath={path}`` serves
one; a partial file is continued with an HTTP Range request. Its listing names the revision, no commit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from tqdm import tqdm

from tasks.models.hub import HubError, HubFile, endpoint, verify
from tasks.models.local import safe_relpath

CHUNK = 1 << 20


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


def transfer(repo: str, partial: Path, base: str, *, token: str | None, revision: str | None,
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
