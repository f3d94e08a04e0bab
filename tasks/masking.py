"""Secrets out of logs, MLflow params and the commands people see: one list of secret words, used everywhere.

A name is secret when one of its words (split at ``_``, ``-``, ``.``) is a secret word, or two
adjacent words form one (``api_key``, ``access-key``): ``hf_token``, ``--api-key``,
``AWS_SECRET_ACCESS_KEY`` are secret; ``max_new_tokens``, ``--tokenizer``, ``cutoff_len`` are not.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

SECRET_WORDS = frozenset({"token", "secret", "password", "passwd", "credential", "credentials", "apikey",
                          "api_key", "access_key", "secret_key", "private_key", "auth"})
MASK = "******"
REDACTED = "***redacted***"


def is_secret_name(name: str) -> bool:
    words = [w for w in re.split(r"[_\-.\s]+", str(name).lower().lstrip("-")) if w]
    pairs = {f"{a}_{b}" for a, b in zip(words, words[1:])}
    return bool(SECRET_WORDS & (set(words) | pairs))


def mask_argv(argv: list[str]) -> list[str]:
    """A copy of ``argv`` with secret values replaced: the value after ``--secret-flag``, and ``KEY=VALUE`` /
    ``--key=value`` pairs with a secret key."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        key, eq, _ = arg.partition("=")
        if hide_next:
            out.append(MASK)
            hide_next = False
        elif eq and is_secret_name(key):
            out.append(f"{key}={MASK}")
        else:
            out.append(arg)
            hide_next = arg.startswith("-") and not eq and is_secret_name(arg)
    return out


def show_argv(argv: list[str]) -> str:
    """How a command is shown to people: shell-quoted, secrets masked."""
    return shlex.join(mask_argv([str(a) for a in argv]))


def redact(obj: Any) -> Any:
    """A copy of ``obj`` whose secret-named keys have their (non-empty) values replaced."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_name(k) and v not in (None, "") else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj
