"""The ModelScope transfer, through the ``modelscope`` package (the vendor's client, which keeps up with the service's
routes, auth and storage redirects): the repository's listing with sizes, sha256 and each file's commit from its
``/api/v1`` client, the branch pinned to the newest of those commits, and each file fetched at that commit by
``model_file_download`` into the ``.partial`` folder (it continues an interrupted file with a Range request and
retries a dropped connection or an outage). On top, as for every hub: each file's size and sha256 checked against the
listing (a file that differs is removed, never used), progress over the whole repository and ``call_back``; the token
goes to the library (a header and a session cookie), never to a log. ``MODELSCOPE_ENDPOINT`` points it at a mirror.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tasks.models.hub import HubError, HubFile, answer_error, fetch_listed


def _error(e: Exception, what: str) -> HubError:
    """The library's errors (its own types, or requests' HTTPError from the legacy wrappers) as the hub's answer."""
    from modelscope_hub.errors import AuthenticationError, NotExistError, PermissionDeniedError

    cause = e.__cause__ if isinstance(e.__cause__, Exception) else e
    status = getattr(cause, "status_code", None) or getattr(getattr(cause, "response", None), "status_code", None)
    if status is None and isinstance(cause, (AuthenticationError, PermissionDeniedError, NotExistError)):
        status = 404 if isinstance(cause, NotExistError) else 401
    return answer_error(what, status, cause)


def head_commit(listing: list[dict]) -> str | None:
    """The newest commit among the files' last commits: the branch's head as far as its files go (ModelScope's API
    names no commit for a branch; each file entry carries the commit that last changed it)."""
    commits = [(f.get("CommittedDate") or 0, f["Revision"]) for f in listing if f.get("Revision")]
    return max(commits)[1] if commits else None


def transfer(repo: str, partial: Path, endpoint: str, *, token: str | None, revision: str | None,
             call_back: Callable | None, timeout: float) -> str:
    """Fetch every file of a ModelScope ``repo`` into ``partial``; returns the commit (or, where the listing names
    none, the revision) they are at."""
    from modelscope.hub.api import HubApi
    from modelscope.hub.file_download import model_file_download

    rev = revision or "master"
    listing_url = f"{endpoint}/api/v1/models/{repo}/repo/files"
    try:
        listing = HubApi(endpoint=endpoint, token=token, timeout=int(timeout)).legacy.list_repo_files(
            repo_id=repo, repo_type="model", revision=rev, recursive=True)
    except Exception as e:  # the library's own error types: mapped, never a raw traceback
        raise _error(e, listing_url) from None
    blobs = [f for f in listing if (f.get("Type") or "blob") == "blob" and f.get("Path")]
    if not blobs:
        raise HubError(f"modelscope repository {repo} lists no files")
    commit = head_commit(blobs) or rev
    files = [HubFile(f["Path"], f.get("Size"), f.get("Sha256") or None,
                     f"{endpoint}/api/v1/models/{repo}/repo?Revision={commit}&FilePath={f['Path']}") for f in blobs]

    def fetch(f: HubFile) -> None:
        try:  # its lock files in partial/.cache, removed with it
            model_file_download(repo, f.path, revision=commit, local_dir=str(partial),
                                cache_dir=str(partial / ".cache"), token=token, endpoint=endpoint)
        except Exception as e:  # the library's own error types: mapped, never a raw traceback
            raise _error(e, f.url) from None

    fetch_listed(files, partial, fetch, desc=f"modelscope:{repo}", call_back=call_back)
    return commit
