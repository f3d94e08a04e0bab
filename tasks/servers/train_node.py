"""One node's share of a training run across nodes (``tasks.servers.ray_nodes`` places one per node, as a Ray actor):
fetch the staged inputs onto the node, run the command under ``tree_guard`` (node 0: with its checkpoints mirrored to
the bucket), report its output and exit, stop it, upload the output folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

from tasks.files import open_private, sha256_file
from tasks.launchers import child_environment, stop_group
from tasks.servers.ray_node import node_copy
from tasks.settings import environ, state_dir

STAGED = ".fineflow-staged"  # the marker a staged folder in the bucket ends with (tasks.finetune.nodes)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
MIRROR_LAST_S = 60  # for the checkpoint mirror's last sweep once the command ended


def interface_of(ip: str) -> str:
    """The network interface that holds ``ip`` on this machine (gloo and NCCL bind to it), "" if none does."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
            if socket.inet_ntoa(raw[20:24]) == ip:
                return name
    return ""


class NodeRun:
    """One node's share of the job (a Ray actor): fetch the inputs, run the command, report, stop, upload."""

    def __init__(self, job: str, fetch_python: str, rank: int = 0):
        # Per rank: two Ray nodes on one machine (a local cluster) may share its FINEFLOW_HOME.
        self.dir = state_dir() / "nodes" / job / f"node-{rank}"
        (self.dir / "out").mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "train.log"
        open_private(self.log).close()
        self.fetch_python, self.proc, self.code, self.stopped = fetch_python, None, None, False
        self.runner: threading.Thread | None = None

    def where(self) -> dict:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        ip = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)  # as the cluster knows it
        with socket.socket() as s:  # a free port on this node, for node 0's rendezvous
            s.bind((ip, 0))
            port = s.getsockname()[1]
        return {"ip": ip, "ifname": interface_of(ip), "port": port, "host": socket.gethostname(), "pid": os.getpid()}

    def fetch(self, stage: dict[str, str], out_from: str) -> dict[str, str]:
        """Each staged URI on this node (placeholder name -> local path); ``out_from``: the output folder's
        earlier contents (checkpoints to resume from) copied into ``out`` first."""
        paths = {name: node_copy(uri.rsplit("#", 1)[0], self.fetch_python, "stage") for name, uri in stage.items()}
        paths = {name: str(Path(p) / stage[name].rsplit("#", 1)[1]) if "#" in stage[name] else p
                 for name, p in paths.items()}
        if out_from:
            self._storage("fetch", out_from, str(self.dir / "out-from"))
            for item in (self.dir / "out-from").iterdir():
                if item.name != STAGED:
                    item.rename(self.dir / "out" / item.name)
        return {**paths, "out": str(self.dir / "out")}

    def _storage(self, *args: str) -> None:
        subprocess.run([self.fetch_python, "-m", "tasks.services.storage", *args], check=True, env=environ(),
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=3600)

    def _guarded(self, argv: list[str], env: dict[str, str], log, grace_s: float = 10) -> subprocess.Popen:
        """``argv`` under ``tree_guard``, its output in the node's log: it and all it starts end with this actor
        (given ``grace_s`` after SIGTERM)."""
        guarded = [sys.executable, str(Path(__file__).with_name("tree_guard.py")), "--grace-s", str(grace_s), "--",
                   *argv]
        return subprocess.Popen(guarded, env={**child_environment(), **env, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(self.dir),
                                start_new_session=True)

    def start(self, argvs: list[list[str]], env: dict[str, str], mirror: dict[str, str] | None = None) -> None:
        """Run ``argvs`` one after another; with ``mirror`` ({"target", "uri"}), the complete checkpoints the
        command writes under ``target`` go to ``uri`` while it runs (the main environment's
        ``tasks.services.checkpoints mirror``), and once more after it ends, however it ends."""
        def run() -> None:
            code = 0
            with open_private(self.log, "ab") as log:
                mirroring = mirror and self._guarded([self.fetch_python, "-m", "tasks.services.checkpoints", "mirror",
                                                      mirror["target"], mirror["uri"]], environ(), log, MIRROR_LAST_S)
                for argv in argvs:
                    if self.stopped:
                        code = -signal.SIGTERM
                        break
                    log.write(("$ " + " ".join(argv) + "\n").encode())
                    log.flush()
                    self.proc = self._guarded(argv, env, log)
                    code = self.proc.wait()
                    if code != 0:
                        break
                if mirroring:  # its last sweep uploads what was saved at the end (or just before a crash)
                    stop_group(mirroring.pid, signal.SIGTERM, timeout_s=MIRROR_LAST_S)
            self.code = code

        self.runner = threading.Thread(target=run, daemon=True)
        self.runner.start()

    def poll(self) -> int | None:
        return self.code

    def read(self, offset: int, path: str = "") -> bytes:
        """What the command's output (or ``path``: a file it writes) holds from ``offset`` on, up to 1 MiB."""
        try:
            with open(path or self.log, "rb") as f:
                f.seek(offset)
                return f.read(1 << 20)
        except FileNotFoundError:  # not written yet
            return b""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.stopped = True
        if self.proc and self.proc.poll() is None:  # the guard stops the command's whole tree
            stop_group(self.proc.pid, signal.SIGTERM, timeout_s=20)
        if self.runner:  # the checkpoint mirror's last sweep (if it takes longer, its guard lets it finish)
            self.runner.join(timeout=30)

    def upload(self, uri: str) -> None:
        """The output folder into the bucket, verified."""
        self._storage("upload", str(self.dir / "out"), uri)

    def weights_sha256(self) -> str:
        """One hash of the output's weight files outside ``checkpoint-*`` folders (which only rank 0 writes; the
        configs beside them name the node's own paths): equal on every node when the method keeps a full copy of
        the weights on each (DDP)."""
        out = self.dir / "out"
        digest, found = hashlib.sha256(), False
        for path in sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
            name = path.relative_to(out).as_posix()
            if not any(part.startswith("checkpoint-") for part in name.split("/")):
                digest.update(f"{name}\0{sha256_file(path)}".encode())
                found = True
        return digest.hexdigest() if found else ""  # "": this node saved no weights (ZeRO: rank 0 saves them)

    def clean(self) -> None:
        """The output off this node once it is in the bucket (the log stays)."""
        shutil.rmtree(self.dir / "out", ignore_errors=True)
