"""The Hugging Face transfer, through ``huggingface_hub`` (the library the ecosystem uses): the listing with sizes and
sha256 (``HfApi.model_info(files_metadata=True)``), the branch resolved to a commit, and each file fetched at that
commit by ``hf_hub_download`` into the ``.partial`` folder (it resumes an interrupted file with a Range request and
retries a dropped connection). On top, as for every hub: each file's size and sha256 checked against the listing
(a file that differs is removed, never used), progress over the whole repository and ``call_back``; the token goes
to the library, never to a log. ``HF_ENDPOINT`` points it at a mirror.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tasks.models.hub import HubError, HubFile, answer_error, fetch_listed


def _error(e: Exception, what: str) -> HubError:
    return answer_error(what, getattr(getattr(e, "response", None), "status_code", None), e)


def transfer(repo: str, partial: Path, endpoint: str, *, token: str | None, revision: str | None,
             call_back: Callable | None, timeout: float) -> str:
    """Fetch every file of ``repo`` into ``partial``; returns the commit they are at."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi(endpoint=endpoint).model_info(repo, revision=revision or "main", files_metadata=True,
                                                   token=token)
    except HfHubHTTPError as e:
        raise _error(e, f"{endpoint}/api/models/{repo}") from None
    commit = info.sha or revision or "main"
    files = [HubFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None, f"{endpoint}/{repo}/resolve/{commit}/"
                     f"{s.rfilename}") for s in info.siblings or []]
    if not files:
        raise HubError(f"huggingface repository {repo} lists no files")

    def fetch(f: HubFile) -> None:
        try:
            hf_hub_download(repo, f.path, revision=commit, local_dir=partial, endpoint=endpoint, token=token,
                            etag_timeout=timeout)
        except HfHubHTTPError as e:
            raise _error(e, f.url) from None
        except OSError as e:  # a body shorter than announced ("Consistency check failed")
            raise HubError(f"{f.path}: {e}") from None

    fetch_listed(files, partial, fetch, desc=f"huggingface:{repo}", call_back=call_back)
    return commit
