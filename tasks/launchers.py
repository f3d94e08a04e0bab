"""Launchers run a component's command: each argv as a subprocess, streamed, exit code checked.

``remote(ngpus=...)`` is the contract's default.  Inside fineflow the "remote"
machine is the Prefect worker's job (a process here, a GPU pod on a Kubernetes
work pool), so it runs the command where the step runs, with the GPU count recorded.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from tasks.masking import is_secret_name, redact_text, show_argv



def child_environment() -> dict[str, str]:
    """This process's environment without its credentials (S3, tracking, hub tokens: ``masking.is_secret_name``):
    what a trainer or a model server starts with. A command that needs a secret passes it in its own env."""
    return {k: v for k, v in os.environ.items() if not is_secret_name(k)}

class LaunchError(RuntimeError):
    """A command exited non-zero; the message holds the masked command and the log's tail."""


class LocalLauncher:
    def __init__(self, *, ngpus: int = 0, sync: bool = True, log_path: str | Path | None = None,
                 on_line: Callable[[str], None] | None = None, env: dict[str, str] | None = None):
        self.ngpus = ngpus
        self.sync = sync
        self.log_path = Path(log_path) if log_path else None
        self.on_line = on_line
        self.env = env or {}

    def launch(self, command, name: str = "job"):
        for argv in command.argvs:
            self.run(argv, name=name, extra_env=command.env)
        if command.checker is not None and not command.checker():
            raise LaunchError(f"{name}: readiness check failed after `{command}`")
        return command.return_value

    def run(self, argv: list[str], name: str = "job", extra_env: dict[str, str] | None = None) -> None:
        """Run one argv, stream each output line to the log file and ``on_line``; raise on non-zero exit."""
        env = {**child_environment(), **self.env, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
        tail: deque[str] = deque(maxlen=40)
        log = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        start = time.monotonic()
        try:
            if log:
                log.write(f"$ {show_argv(argv)}\n")
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    stdin=subprocess.DEVNULL, env=env, bufsize=1)
            assert proc.stdout is not None
            for line in proc.stdout:
                line = redact_text(line.rstrip("\n"))  # a child that prints a secret does not put it in a log
                tail.append(line)
                if log:
                    log.write(line + "\n")
                    log.flush()
                if self.on_line:
                    self.on_line(line)
            code = proc.wait()
        finally:
            if log:
                log.close()
        if code != 0:
            raise LaunchError(
                f"{name} failed with exit code {code} after {time.monotonic() - start:.0f}s: "
                f"{show_argv(argv)}\n--- last output ---\n" + "\n".join(tail)
            )


@contextmanager
def follow(path: str | Path | None, on_line: Callable[[str], None], interval_s: float = 0.5):
    """While the block runs, call ``on_line`` for each line appended to ``path`` (a framework's own metrics log);
    lines already there when it starts are skipped, a truncated file is read again from the top, and the last
    lines are read after the block ends. ``path`` None: nothing to follow."""
    if path is None:
        yield
        return
    path = Path(path)
    offset = path.stat().st_size if path.exists() else 0
    done = threading.Event()

    def read_new() -> None:
        nonlocal offset
        if not path.exists():
            return
        size = path.stat().st_size
        if size < offset:
            offset = 0
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            on_line(line)

    def loop() -> None:
        while not done.wait(interval_s):
            read_new()

    thread = threading.Thread(target=loop, name=f"follow-{path.name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        read_new()


class EmptyLauncher(LocalLauncher):
    """The contract's ``launchers.empty()``: run in place, no GPU request."""


def empty(**kw) -> EmptyLauncher:
    return EmptyLauncher(**kw)


def local(**kw) -> LocalLauncher:
    return LocalLauncher(**kw)


def remote(ngpus: int = 1, sync: bool = True, **kw) -> LocalLauncher:
    return LocalLauncher(ngpus=ngpus, sync=sync, **kw)


def cuda_available() -> bool:
    """Whether this process sees a CUDA device (torch imported only here, when asked)."""
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
