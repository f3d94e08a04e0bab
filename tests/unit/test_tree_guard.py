"""``tasks.servers.tree_guard``: what a training node's command leaves behind when it is stopped or its node's
actor dies, on real processes: a grandchild in a session of its own (as torchrun starts its workers) included."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks.servers import tree_guard

GUARD = [sys.executable, tree_guard.__file__, "--grace-s", "1", "--"]
# A command that starts a worker in a session of its own, writes the worker's pid, then waits.
SPAWNER = ("import subprocess, sys, time\n"
           "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
           "open(sys.argv[1], 'w').write(str(w.pid))\ntime.sleep(300)\n")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def worker_pid(path: Path) -> int:
    deadline = time.monotonic() + 30
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return int(path.read_text())


def gone(pid: int, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def test_the_exit_code_is_the_commands():
    assert subprocess.run([*GUARD, "sh", "-c", "exit 3"], timeout=30).returncode == 3
    assert subprocess.run([*GUARD, "true"], timeout=30).returncode == 0


def test_a_stop_takes_down_a_worker_in_another_session(tmp_path):
    guard = subprocess.Popen([*GUARD, sys.executable, "-c", SPAWNER, str(tmp_path / "pid")])
    worker = worker_pid(tmp_path / "pid")
    guard.send_signal(signal.SIGTERM)
    assert guard.wait(timeout=30) == 128 + signal.SIGTERM
    assert gone(worker)


def started_by_a_parent(tmp_path) -> tuple[subprocess.Popen, int, int]:
    """(a parent that started the guard, the guard's pid, the worker's pid)."""
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        f"subprocess.Popen({[*GUARD, sys.executable, '-c', SPAWNER, str(tmp_path / 'pid')]!r})\ntime.sleep(300)\n")])
    worker = worker_pid(tmp_path / "pid")
    return parent, tree_guard.children()[parent.pid][0], worker


def test_the_tree_goes_when_the_guards_parent_dies(tmp_path):
    parent, guard, worker = started_by_a_parent(tmp_path)
    parent.kill()  # a node's actor, killed with its node
    parent.wait(timeout=10)
    assert gone(worker) and gone(guard)


def test_an_orphaned_worker_is_the_guards_and_goes_with_it(tmp_path):
    parent, guard, worker = started_by_a_parent(tmp_path)
    command = tree_guard.children()[guard][0]
    subprocess.run(["kill", "-9", str(command)], check=True)  # torchrun dies: its worker is an orphan
    assert worker in tree_guard.children().get(guard, []) or not alive(worker)  # handed to the guard, not init
    assert gone(worker) and gone(guard)
    parent.kill()
    parent.wait(timeout=10)
