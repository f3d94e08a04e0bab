"""Secrets out of logs, MLflow params and tags, and the commands people see: one rule, used everywhere.

A value is secret when its *name* means a credential, or when the value *is* a known secret.

A name means a credential when (words split at ``_``, ``-``, ``.``, spaces; case ignored):
- it ends in the word ``key`` after another word (``api_key``, ``--secret-key``, ``s3.access_key``), except
  keys that are ordinary identifiers (``cache_key``, ``sort_key``);
- it contains ``secret``, ``password``/``passwd``, ``credential`` or ``apikey`` anywhere;
- its last word is ``token`` or ``auth``/``authorization`` (``hf_token``, ``--api-token``);
- it is a credential variable of AWS, MLflow, Prefect or the model hubs (``AWS_ACCESS_KEY_ID``, ...).
``max_new_tokens``, ``max_tokens``, ``--tokenizer``, ``num_tokens``, ``token_count``, ``cutoff_len`` are not.

A known secret value is the value of an environment variable whose name means a credential, or one given to
``register_secret`` (a config's ``hf_token``): it is masked wherever it shows, under any name and inside logs.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from tasks.settings import environ

MASK = "******"
REDACTED = "***redacted***"
ANYWHERE = ("secret", "password", "passwd", "credential", "apikey")
LAST_WORDS = frozenset({"token", "auth", "authorization"})
ORDINARY_KEYS = frozenset({"cache", "sort", "primary", "foreign", "hash", "group", "partition", "dict"})
CREDENTIAL_VARIABLES = frozenset({
    "aws_access_key_id", "aws_session_token", "mlflow_tracking_username", "mlflow_tracking_password",
    "mlflow_tracking_token", "prefect_api_key", "prefect_api_auth_string", "prefect_server_api_auth_string",
    "hf_token", "hugging_face_hub_token",
    "modelscope_api_token",
})
MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") would mask ordinary text everywhere they occur
_registered: set[str] = set()


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[_\-.\s]+", str(name).lower()) if w]


def is_secret_name(name: str) -> bool:
    words = _words(name)
    if not words:
        return False
    joined = "_".join(words)
    if joined in CREDENTIAL_VARIABLES or any(w in joined for w in ANYWHERE):
        return True
    if words[-1] in LAST_WORDS:
        return True
    return len(words) > 1 and words[-1] == "key" and words[-2] not in ORDINARY_KEYS


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it shows from now on in this process (a token read from a config file)."""
    if value and len(str(value)) >= MIN_SECRET_LENGTH:
        _registered.add(str(value))


def known_secret_values() -> set[str]:
    """Values to mask wherever they show: the registered ones and those of credential environment variables."""
    from_env = {v for k, v in environ().items() if len(v) >= MIN_SECRET_LENGTH and is_secret_name(k)}
    return _registered | from_env


def redact_text(text: str) -> str:
    """``text`` with every known secret value replaced (the longest first, so no part of one is left)."""
    for secret in sorted(known_secret_values(), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def mask_argv(argv: list[str]) -> list[str]:
    """A copy of ``argv`` with secret values replaced: the value after ``--secret-flag``, ``KEY=VALUE`` /
    ``--key=value`` pairs with a secret key, and known secret values wherever they stand."""
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
            out.append(redact_text(arg))
            hide_next = arg.startswith("-") and not eq and is_secret_name(arg)
    return out


def show_argv(argv: list[str]) -> str:
    """How a command is shown to people: shell-quoted, secrets masked."""
    return shlex.join(mask_argv([str(a) for a in argv]))


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (params, tags) whose secret-named keys have their non-empty values replaced, and whose
    strings have known secret values masked."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_name(k) and v not in (None, "") else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj
