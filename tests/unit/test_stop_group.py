"""``tasks.launchers.stop_group`` on real process groups: one that ends on its stop signal is stopped, one that
ignores it is killed after the grace time, and the caller is told which (``infra.stack down`` says so)."""

from __future__ import annotations

import subprocess
import sys

from tasks.launchers import group_alive, stop_group

IGNORES_TERM = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n" \
               "time.sleep(300)\n"


def started(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"  # its handlers are in place
    return proc


def test_a_group_that_ends_on_its_signal_is_stopped_and_one_that_ignores_it_is_killed():
    polite = started("import time\nprint('ready', flush=True)\ntime.sleep(300)\n")
    stubborn = started(IGNORES_TERM)
    try:
        assert stop_group(polite.pid, timeout_s=30) is True and polite.wait(timeout=10) == -15
        assert stop_group(stubborn.pid, timeout_s=0.5) is False and stubborn.wait(timeout=10) == -9
        assert not group_alive(polite.pid) and not group_alive(stubborn.pid)
        assert stop_group(polite.pid) is True  # a group already gone: nothing to kill
    finally:
        for proc in (polite, stubborn):
            proc.kill()
            proc.wait(timeout=10)
