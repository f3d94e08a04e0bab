"""Launchers run a component's command: each argv as a subprocess, streamed, exit code checked; and the
process groups that outlive their step (services, endpoints): alive or not, stopped.

``remote(ngpus=...)`` is the contract's default. Inside fineflow the "remote" machine is the Prefect worker's job
(a process here, a pod on a Kubernetes work pool), so it runs the command where the step runs, and waits for it:
``sync`` is kept for the contract's signature only. ``ngpus`` is how many processes a framework's command starts
(``torchrun --nproc_per_node``), which the finetune backends read from their launcher.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from tasks.masking import is_secret_name, redact_text, show_argv
from tasks.settings import environ, telemetry_env


def child_environment() -> dict[str, str]:
    """This process's environment without its credentials (S3, tracking, hub tokens: ``masking.is_secret_name``):
    what a trainer or a model server starts with, telemetry off (``settings.telemetry_env``). A command that needs a
    secret passes it in its own env."""
    return {**telemetry_env(), **{k: v for k, v in environ().items() if not is_secret_name(k)}}

class LaunchError(RuntimeError):
    """A command exited non-zero; the message holds the masked command and the log's tail."""


class LocalLauncher:
    nnodes = 1  # machines a command spans (tasks.finetune.nodes.NodesLauncher: more)

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

    def following(self, path: str | Path | None, on_line: Callable[[str], None]):
        """A context in which ``on_line`` gets each line a command of this launcher appends to ``path`` (a
        framework's metrics file: ``follow``)."""
        return follow(path, on_line)

    def mirrors_checkpoints(self, target: str | Path, uri: str) -> bool:
        """Whether this launcher mirrors the checkpoints its command writes under ``target`` to ``uri`` where they
        are written (``NodesLauncher``: on the nodes). False: they are written on this machine, where the caller
        mirrors them (``checkpoints.mirror``)."""
        return False

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
    lines already there when it starts are skipped, a truncated or replaced file (LLaMA-Factory starts its log anew
    when it resumes) is read again from the top, and the last lines are read after the block ends. ``path`` None:
    nothing to follow."""
    if path is None:
        yield
        return
    path = Path(path)
    offset, inode = (path.stat().st_size, path.stat().st_ino) if path.exists() else (0, None)
    done = threading.Event()

    def read_new() -> None:
        nonlocal offset, inode
        if not path.exists():
            return
        stat = path.stat()
        if stat.st_size < offset or stat.st_ino != inode:
            offset, inode = 0, stat.st_ino
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


def group_alive(pgid: int) -> bool:
    """Whether the process group's leader still runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return Path(f"/proc/{pgid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return True  # no /proc (macOS): trust the signal


def stop_group(pgid: int, sig: int = signal.SIGTERM, timeout_s: float = 15) -> bool:
    """Stop a detached process group (a service, an endpoint and its supervisor): ``sig``, then SIGKILL if its
    leader still runs after ``timeout_s``. False when it had to be killed."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + 5  # gone, as the caller reads it, before it goes on
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return False
