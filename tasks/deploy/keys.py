"""The endpoints' API key: generated once, kept in a 0600 file under ``FINEFLOW_HOME``, never shown.

    python -m tasks.deploy.keys path      # where the key is (print the key itself: cat that file)

Every endpoint fineflow starts requires ``Authorization: Bearer <key>`` on its API routes (``/health`` stays
open for readiness probes). The key reaches a server through its environment (``FINEFLOW_API_KEY`` for the
built-in server, ``VLLM_API_KEY`` for vLLM), never its argv, so it is not in ``ps``, launch commands, logs,
MLflow params or registry tags; the registry holds only the file's path (``api_key_file``). Clients read the
file, or ``FINEFLOW_API_KEY`` when set (a key shared by several machines).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from tasks.masking import register_secret
from tasks.settings import state_dir

ENV_VAR = "FINEFLOW_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # the addresses an endpoint without a key may bind


def key_path() -> Path:
    return state_dir() / "api_key"


def api_key() -> str:
    """The key (``FINEFLOW_API_KEY``, else the file, made on first use with mode 0600); masked from now on."""
    key = os.environ.get(ENV_VAR)
    if not key:
        path = key_path()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL: two processes making it at once end up with one key; 0600 from the start, never wider.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write("ff-" + secrets.token_urlsafe(32))
        key = path.read_text().strip()
    register_secret(key)
    return key


def auth_headers() -> dict[str, str]:
    """The header a client sends to a fineflow endpoint."""
    return {"Authorization": f"Bearer {api_key()}"}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args != ["path"]:
        sys.exit("usage: python -m tasks.deploy.keys path")
    api_key()
    print(key_path())


if __name__ == "__main__":
    main()
