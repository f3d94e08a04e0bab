"""What a Ray Serve replica does on its own node (``ray_serve``): read the API key there, fetch files from the
bucket there, and tie the engine server's life to its own."""

from __future__ import annotations

import hashlib
import signal
import subprocess

from tasks.settings import api_key_file, env, environ, state_dir

# Ray's client proxy starts one server process per driver connection. On a loaded machine that start can fail
# ("Starting Ray client server failed"), or the process dies as it starts and the proxy's own check of it raises
# (psutil's ZombieProcess; ray-project/ray#63202): seen in two-host runs. Either way the connection's first
# answer is this, before the driver did anything on the cluster: a driver connects again.
CLIENT_SERVER_FAILED = "Initialization failure from server"
CONNECT_RETRIES = 2
CONNECT_PAUSE_S = 2.0  # times the attempt: 2 s, then 4 s


def node_api_key(var: str) -> dict[str, str]:
    """The API key as this node has it (``FINEFLOW_API_KEY``, else its key file), for the engine's ``var``."""
    path = api_key_file()
    key = env("FINEFLOW_API_KEY") or (path.read_text().strip() if path.exists() else "")
    if not key:
        raise RuntimeError(f"no API key on this node: set FINEFLOW_API_KEY in its environment or put the key in "
                           f"{path}")
    return {var: key}


def node_copy(model_uri: str, fetch_python: str, kind: str = "models") -> str:
    """The model's (or, ``kind="adapters"``, an adapter's) files on this node, fetched once from the bucket, whole,
    with the main environment's client."""
    target = state_dir() / kind / "ray" / hashlib.sha256(model_uri.encode()).hexdigest()[:16]
    if not target.is_dir():
        subprocess.run([fetch_python, "-m", "tasks.services.storage", "fetch", model_uri, str(target)], check=True,
                       env=environ(), stdin=subprocess.DEVNULL, timeout=3600)
    return str(target)


def die_with_parent() -> None:
    """In the engine server's process, before it runs: the kernel sends it SIGTERM when the replica that started it
    dies, however it dies (a replica killed with its node never runs ``__del__``)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
