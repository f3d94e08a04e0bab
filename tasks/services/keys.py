"""The endpoints' API key: generated once, kept in a 0600 file under ``FINEFLOW_HOME``, never shown.

    python -m tasks.services.keys path      # where the key is (print the key itself: cat that file)

Every endpoint fineflow starts requires ``Authorization: Bearer <key>`` on its API routes (``/health`` stays
open for readiness probes). The key reaches a server through its environment (``FINEFLOW_API_KEY`` for the
built-in server, ``VLLM_API_KEY`` for vLLM), never its argv, so it is not in ``ps``, launch commands, logs,
MLflow params or registry tags; the registry holds only the file's path (``api_key_file``). Clients read the
file, or ``FINEFLOW_API_KEY`` when set (a key shared by several machines).
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from tasks.files import create_private
from tasks.masking import register_secret
from tasks.settings import api_key_file, env


def key_path() -> Path:
    return api_key_file()


def api_key() -> str:
    """The key (``FINEFLOW_API_KEY``, else the file, made on first use with mode 0600); masked from now on."""
    key = env("FINEFLOW_API_KEY") or create_private(key_path(), lambda: "ff-" + secrets.token_urlsafe(32)).strip()
    register_secret(key)
    return key


def auth_headers() -> dict[str, str]:
    """The header a client sends to a fineflow endpoint."""
    return {"Authorization": f"Bearer {api_key()}"}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args != ["path"]:
        sys.exit("usage: python -m tasks.services.keys path")
    api_key()
    print(key_path())


if __name__ == "__main__":
    main()
