"""Files in and out of the media engines, as the contract passes them.

A request names its files as paths, as ``data:<mime>;base64,...`` URLs, or inside an encoded query
(``encode_query_with_filepaths``); a base64 file is written under the temp dir first. An engine that makes files
(TTS) answers ``encode_query_with_filepaths(files=[data URLs])`` so the answer works on any machine;
``materialize`` writes those into the temp dir and gives back the same query with paths, which is what the
contract's examples show (``<lazyllm-query>{"query": "", "files": ["<temp>/piper/sound_<id>_0.wav"]}``).

The temp dir is ``FINEFLOW_TEMP_DIR`` (the reference package's ``LAZYLLM_TEMP_DIR``), default
``$FINEFLOW_HOME/tmp``; its folders are the user's alone (0700), the files written there 0600, and files older
than a day are removed when new ones are written there. A request's path is read only under the temp dir or a data
root (``settings.data_roots``); any other path, present or not, gets the same refusal, so a client cannot learn
what exists elsewhere on the server's machine.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import os
import re
import time
import uuid
from pathlib import Path

from tasks.formatter.files import decode_query_with_filepaths, encode_query_with_filepaths
from tasks.settings import data_roots, env, state_dir

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.S)
EXTENSIONS = {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/mpeg": ".mp3", "audio/flac": ".flac",
              "image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "application/pdf": ".pdf"}
MAX_AGE_S = 24 * 3600


class MediaInputError(ValueError):
    """A request whose files cannot be read: the message names the file and why."""


def temp_dir(sub: str = "") -> Path:
    base = env("FINEFLOW_TEMP_DIR") or env("LAZYLLM_TEMP_DIR") or state_dir() / "tmp"
    path = Path(base).expanduser().resolve() / sub
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if sub and path.stat().st_uid == os.getuid():
        path.chmod(0o700)  # made before this rule, or under a umask that widened it
    return path


def readable_roots() -> list[Path]:
    """Where a request's file paths may point: the temp dir and the data roots."""
    return [temp_dir(), *data_roots()]


def prune(folder: Path, max_age_s: float = MAX_AGE_S) -> None:
    cutoff = time.time() - max_age_s
    for f in folder.iterdir():
        if f.is_file() and f.stat().st_mtime < cutoff:
            f.unlink(missing_ok=True)


def to_data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def file_to_data_url(path: str | Path) -> str:
    mime = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
    return to_data_url(Path(path).read_bytes(), mime)


def from_data_url(url: str, folder: Path, stem: str) -> Path:
    """A ``data:`` URL written as ``folder/<stem><ext>``."""
    m = DATA_URL.match(url)
    if not m:
        raise MediaInputError(f"not a base64 data URL: {url[:40]!r}...")
    try:
        data = base64.b64decode(m["data"], validate=True)
    except binascii.Error as e:
        raise MediaInputError(f"a {m['mime']} data URL whose base64 does not decode: {e}") from None
    path = folder / f"{stem}{EXTENSIONS.get(m['mime'], mimetypes.guess_extension(m['mime']) or '.bin')}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the user's alone
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def input_files(inputs, sub: str = "inputs") -> list[Path]:
    """The files a request names (``{"inputs": ...}``, a path, a list, an encoded query), base64 ones written
    under the temp dir; a path must be a file under ``readable_roots``."""
    if isinstance(inputs, dict):
        inputs = next((inputs[k] for k in ("inputs", "ocr_files", "files") if inputs.get(k)), None)
    if isinstance(inputs, str):
        decoded = decode_query_with_filepaths(inputs)
        inputs = decoded["files"] if isinstance(decoded, dict) else [decoded]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(f, str) for f in inputs):
        raise MediaInputError(f"expected a file path, a data URL or a list of them, got {str(inputs)[:80]!r}")
    folder, files = None, []
    for item in inputs:
        if item.startswith("data:"):
            if folder is None:
                folder = temp_dir(sub)
                prune(folder)
            files.append(from_data_url(item, folder, f"upload_{uuid.uuid4().hex}"))
            continue
        path = Path(item).expanduser().resolve()  # links resolved: one cannot lead out of the roots
        roots = readable_roots()
        if not any(path.is_relative_to(r) for r in roots) or not path.is_file():
            raise MediaInputError(f"no such file among those this server reads: {item} (it reads files under "
                                  f"{', '.join(map(str, roots))}; send any other as a data URL)")
        files.append(path)
    return files


def materialize(answer: str, sub: str) -> str:
    """An engine's answer with its ``data:`` files written under ``<temp dir>/<sub>/`` as
    ``sound_<id>_<i><ext>`` (or ``image_...``), returned as the same encoded query with their paths."""
    decoded = decode_query_with_filepaths(answer)
    if not isinstance(decoded, dict) or not any(f.startswith("data:") for f in decoded.get("files", [])):
        return answer
    folder, run = temp_dir(sub), uuid.uuid4().hex[:12]
    prune(folder)
    paths = []
    for i, f in enumerate(decoded["files"]):
        kind = "sound" if f.startswith("data:audio") else "image" if f.startswith("data:image") else "file"
        paths.append(str(from_data_url(f, folder, f"{kind}_{run}_{i}")) if f.startswith("data:") else f)
    return encode_query_with_filepaths(decoded.get("query", ""), paths)
