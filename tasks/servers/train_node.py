"""One node's share of a training run across nodes (``tasks.servers.ray_nodes`` places one per node, as a Ray actor):
fetch the staged inputs onto the node, run the command under ``tree_guard``, report its output and exit, upload its
part of each checkpoint, stop it, upload the output folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
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
        self.checkpoint_folders: list[tuple[str, int]] = []  # what pending_checkpoints last looked at

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
            self._main_env("tasks.services.storage", "fetch", out_from, str(self.dir / "out-from"))
            for item in (self.dir / "out-from").iterdir():
                if item.name != STAGED:
                    item.rename(self.dir / "out" / item.name)
        return {**paths, "out": str(self.dir / "out")}

    def _main_env(self, module: str, *args: str) -> str:
        """``python -m module ARGS`` of the main environment (the bucket's client, this node's credentials)."""
        return subprocess.run([self.fetch_python, "-m", module, *args], check=True, env=environ(), text=True,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=3600).stdout

    def start(self, argvs: list[list[str]], env: dict[str, str]) -> None:
        def run() -> None:
            code = 0
            with open_private(self.log, "ab") as log:
                for argv in argvs:
                    if self.stopped:
                        code = -signal.SIGTERM
                        break
                    log.write(("$ " + " ".join(argv) + "\n").encode())
                    log.flush()
                    guarded = [sys.executable, str(Path(__file__).with_name("tree_guard.py")), "--", *argv]
                    self.proc = subprocess.Popen(guarded, env={**child_environment(), **env, "PYTHONUNBUFFERED": "1"},
                                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                 cwd=str(self.dir), start_new_session=True)
                    code = self.proc.wait()
                    if code != 0:
                        break
            self.code = code

        threading.Thread(target=run, daemon=True).start()

    def pending_checkpoints(self, target: str, uri: str, force: bool = False) -> list[str]:
        """Node 0: the checkpoints under ``target`` its trainer finished (every rank saved its part) that ``uri``
        lacks. Asked only when a checkpoint folder or a file in one appeared since the last time (or ``force``):
        the answer starts a process and lists the bucket, every few seconds beside the training otherwise."""
        folders = []
        for path in Path(target).glob("checkpoint-*"):
            try:
                folders.append((path.name, path.stat().st_mtime_ns))
            except FileNotFoundError:  # rotated away meanwhile
                pass
        if sorted(folders) == self.checkpoint_folders and not force:
            return []
        self.checkpoint_folders = sorted(folders)
        return json.loads(self._main_env("tasks.services.checkpoints", "pending", target, uri))

    def snapshot_checkpoint(self, target: str, name: str) -> bool:
        """This node's files of checkpoint ``name`` hard-linked aside, at once: the trainer rotates old checkpoints
        away (``save_total_limit``), maybe while one uploads. False: this node holds no such folder."""
        source, snapshot = Path(target) / name, self.dir / "mirror" / name
        shutil.rmtree(snapshot, ignore_errors=True)
        if not source.is_dir():
            return False
        try:
            shutil.copytree(source, snapshot, copy_function=os.link)
        except (OSError, shutil.Error):  # rotated away while it was linked
            shutil.rmtree(snapshot, ignore_errors=True)
            return False
        return True

    def upload_checkpoint(self, name: str, uri: str, part: bool) -> None:
        """This node's snapshot of checkpoint ``name`` into ``uri`` (``part``: without the marker, which node 0's
        upload writes last), then the snapshot removed."""
        snapshot = self.dir / "mirror" / name
        try:
            self._main_env("tasks.services.checkpoints", "upload", str(snapshot), uri, *(["--part"] if part else []))
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

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

    def upload(self, uri: str) -> None:
        """The output folder into the bucket, verified."""
        self._main_env("tasks.services.storage", "upload", str(self.dir / "out"), uri)

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
