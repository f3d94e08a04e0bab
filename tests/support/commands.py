"""Reading commands back: the flags of an argv or a shell line, to compare commands field by field."""

from __future__ import annotations

import shlex


def argv_options(argv: list[str], start: int) -> dict[str, str | bool]:
    """``--flag value`` / ``--flag=value`` / ``--switch`` pairs of ``argv`` from ``start`` on."""
    out: dict[str, str | bool] = {}
    i = start
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if eq:
            out[flag] = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[flag], i = argv[i + 1], i + 1
        else:
            out[flag] = True
        i += 1
    return out


def flags(command: str | list[str]) -> dict[str, str | bool]:
    """``--flag value`` / ``--flag="value"`` / ``--switch`` of a command line, flags spelled with dashes."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    start = next(i for i, a in enumerate(argv) if a.startswith("--"))
    return {k.replace("_", "-"): v for k, v in argv_options(argv, start).items()}
