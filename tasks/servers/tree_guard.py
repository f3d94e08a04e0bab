"""Run a command, and take every process it starts down with it.

    python -m tasks.servers.tree_guard [--grace-s 10] -- ARGV...

A training node (``tasks.servers.ray_nodes``) starts its command through this. torchrun puts each of its workers in
a session of its own, and a worker whose torchrun dies is left to init, so neither a process group nor the parent's
death signal reaches them all. The guard is a child subreaper (an orphan below it becomes its child, not init's), so
it always sees the whole tree; it ends with its parent (the node's actor, however that dies) or on SIGTERM/SIGINT:
the command gets SIGTERM, then whatever is left of the tree SIGKILL. Its exit code is the command's.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
GRACE_S = 10.0  # for the command to stop its own processes after SIGTERM


def children() -> dict[int, list[int]]:
    """Each process's children, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(root: int) -> list[int]:
    tree, found, todo = children(), [], [root]
    while todo:
        for pid in tree.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


def reap(command: subprocess.Popen) -> None:
    """Collect the exit of orphans handed to this subreaper (so none stays a zombie); the command's own exit is
    left to ``command``, which reads its code."""
    for pid in children().get(os.getpid(), []):
        if pid != command.pid:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def take_down(command: subprocess.Popen, grace_s: float) -> None:
    if command.poll() is None:
        command.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while descendants(os.getpid()) and time.monotonic() < deadline:
        reap(command)
        command.poll()
        time.sleep(0.2)
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.2)
    reap(command)
    command.poll()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    grace_s = GRACE_S
    if argv[:1] == ["--grace-s"]:
        grace_s, argv = float(argv[1]), argv[2:]
    argv = argv[1:] if argv[:1] == ["--"] else argv
    if not argv:
        sys.exit("usage: python -m tasks.servers.tree_guard [--grace-s S] -- ARGV...")
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _: stopping.append(number))
    if os.getppid() == 1:  # the parent died before the death signal was set
        sys.exit(143)
    command = subprocess.Popen(argv)
    while command.poll() is None and not stopping:
        reap(command)
        time.sleep(0.2)
    take_down(command, grace_s)
    sys.exit(128 + stopping[0] if stopping else command.returncode)


if __name__ == "__main__":
    main()
