"""Files on this machine, each done one way: content hashes, folders filled aside and renamed into place, atomic
and private writes, and file locks (for what is truly per machine: an environment build, a working directory).
Standard library only: servers in other frameworks' environments import it."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

INCOMPLETE_MARKER = ".fineflow-incomplete"  # in a folder that is still being filled


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def filling(target: Path, hidden: bool = False) -> Iterator[Path]:
    """A ``<target>.partial`` folder (``.<target>.partial`` when ``hidden``: where other tools glob the siblings),
    marked incomplete, that becomes ``target`` only if the block succeeds (replacing what was there); after a
    failure it stays, so the next attempt continues from what it holds. Nothing half-fetched is ever where a whole
    folder is expected."""
    partial = target.with_name(f"{'.' if hidden else ''}{target.name}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    (partial / INCOMPLETE_MARKER).touch()
    yield partial
    (partial / INCOMPLETE_MARKER).unlink()
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` aside, then rename it over ``path``: a reader (or a run at the same time) sees the old file
    or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # one per writer, threads included
    aside.write_text(text)
    os.replace(aside, path)


def make_private(root: Path) -> None:
    """``root`` and everything under it readable by its owner only (group and other bits removed; links left as
    they are): for a state directory an earlier, laxer start left open."""
    root.mkdir(parents=True, exist_ok=True)
    for path in (root, *root.rglob("*")):
        if not path.is_symlink() and (mode := path.stat().st_mode) & 0o077:
            path.chmod(mode & 0o7700)


def open_private(path: Path, mode: str = "ab"):
    """``open(path, mode)``, a file it creates readable by its owner only (a log: what a server prints may be
    private)."""
    return open(path, mode, opener=lambda name, flags: os.open(name, flags, 0o600))


def create_private(path: Path, make: Callable[[], str]) -> str:
    """The content of ``path``, a file readable by its owner only; created once with ``make()`` when missing.
    It is written whole aside (mode 0600 from the start) and linked into place, so two processes creating it at
    once end up with one file, and no reader ever sees it empty."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(make())
        try:
            os.link(aside, path)  # fails if another process linked its own first: theirs is kept
        except FileExistsError:
            pass
        finally:
            aside.unlink()
    return path.read_text()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block: one process at a time on this
    machine; the next waits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def slug(text: str) -> str:
    """``text`` as a name that is safe in a file name, an endpoint or application name and a URL path segment."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)
