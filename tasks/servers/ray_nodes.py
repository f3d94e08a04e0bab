"""Run one training command on several nodes of a Ray cluster: one actor per node, placed ``STRICT_SPREAD``.

    python -m tasks.servers.ray_nodes --address ray://HEAD:10001 --nodes 2 --cpus 1 --job JOB \\
        --fetch-python /path/to/main/python --spec SPEC.json

The worker's launcher (``tasks.finetune.nodes``) writes the spec: the command's argvs and env with placeholders
(``{ff:NAME}``), the bucket URIs of the files it needs (``stage``), and where the result goes (``out``). Each node
fetches those files with the main environment's storage client and its own credentials (no shared filesystem and
no secret in Ray's control store), fills in its rank, node 0's address and port, its interface for gloo/NCCL, and
its local paths, then runs the command in its own process group, tied to the actor's life. Node 0's output is
printed here line by line (the step parses its metrics); a node that fails, or is lost, stops the others and ends
this program with that node's name and log tail. On success node 0 uploads its output folder; the last line
printed is a JSON summary.
"""

from __future__ import annotations

import argparse
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
import time
from pathlib import Path

from tasks.files import open_private
from tasks.launchers import child_environment, stop_group
from tasks.servers.ray_node import CLIENT_SERVER_FAILED, CONNECT_RETRIES, node_copy
from tasks.settings import environ, state_dir

POLL_S = 0.5
ANSWER_TIMEOUT_S = 60  # a node whose actor does not answer this long is taken as lost
SAY = "[nodes]"
METRICS = "[node 0 metrics] "  # a line of node 0's metrics file, as printed here
STAGED = ".fineflow-staged"  # the marker a staged folder in the bucket ends with (tasks.finetune.nodes)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def placeholder(name: str) -> str:
    return "{ff:" + name + "}"


def filled(value: str, values: dict[str, str]) -> str:
    for name, v in values.items():
        value = value.replace(placeholder(name), v)
    return value


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

    def __init__(self, job: str, fetch_python: str):
        self.dir = state_dir() / "nodes" / job
        (self.dir / "out").mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "train.log"
        open_private(self.log).close()
        self.fetch_python, self.proc, self.code, self.stopped = fetch_python, None, None, False

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
                digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
                found = True
        return digest.hexdigest() if found else ""  # "": this node saved no weights (ZeRO: rank 0 saves them)

    def clean(self) -> None:
        """The output off this node once it is in the bucket (the log stays)."""
        shutil.rmtree(self.dir / "out", ignore_errors=True)


def say(message: str) -> None:
    print(f"{SAY} {message}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="ray://HEAD:10001, or the head's GCS host:port")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--cpus", type=float, default=1, help="CPUs each node's share holds")
    parser.add_argument("--gpus", type=float, default=0, help="GPUs each node's share holds")
    parser.add_argument("--job", required=True, help="the job's name (its folder on each node)")
    parser.add_argument("--fetch-python", required=True, help="the main environment's python on every node")
    parser.add_argument("--spec", type=Path, required=True, help="JSON: argvs, env, stage, out_from, out_to")
    parser.add_argument("--place-timeout-s", type=float, default=300)
    return parser.parse_args(argv)


class NodeFailed(RuntimeError):
    pass


def connect(ray, address: str) -> None:
    for attempt in range(1 + CONNECT_RETRIES):
        try:
            ray.init(address=address, namespace="fineflow-train", log_to_driver=False)
            return
        except ConnectionAbortedError as e:
            if CLIENT_SERVER_FAILED not in str(e) or attempt == CONNECT_RETRIES:
                raise
            say(f"Ray's client server at {address} did not start a server for this driver; connecting again")
            time.sleep(2 * (attempt + 1))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    spec = json.loads(args.spec.read_text())
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a cancelled step stops the nodes (finally below)
    connect(ray, args.address)
    bundle = {"CPU": args.cpus, **({"GPU": args.gpus} if args.gpus else {})}
    say(f"placing {args.nodes} nodes, one per machine (STRICT_SPREAD), each {bundle}")
    group = placement_group([bundle] * args.nodes, strategy="STRICT_SPREAD")
    actors: list = []
    places: list[dict] = []
    try:
        if not group.wait(timeout_seconds=args.place_timeout_s):
            alive = [n for n in ray.nodes() if n["Alive"]]
            raise NodeFailed(f"the cluster at {args.address} has no {args.nodes} nodes with {bundle} free each "
                             f"after {args.place_timeout_s:.0f} s ({len(alive)} node(s) alive: "
                             f"{', '.join(n['NodeManagerAddress'] for n in alive)})")
        remote = ray.remote(NodeRun)
        # Ray SIGKILLs a dying worker's children, which would leave the guard no time to stop the command's tree
        # (torchrun's workers are in sessions of their own): the guard does it, on the actor's death.
        keep = {"env_vars": {"RAY_kill_child_processes_on_worker_exit": "false"}}
        actors = [remote.options(num_cpus=args.cpus, num_gpus=args.gpus, max_restarts=0, runtime_env=keep,
                                 scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)
                                 ).remote(args.job, args.fetch_python) for i in range(args.nodes)]
        places = ray.get([a.where.remote() for a in actors], timeout=args.place_timeout_s)
        for rank, place in enumerate(places):
            say(f"node {rank}: {place['ip']} ({place['ifname'] or 'no interface found'})")
        say(f"fetching {len(spec['stage'])} input(s) on each node")
        paths = ray.get([a.fetch.remote(spec["stage"], spec.get("out_from", "")) for a in actors], timeout=3600)

        def values_of(rank: int) -> dict[str, str]:
            place, master = places[rank], places[0]
            return {"node_rank": str(rank), "nnodes": str(args.nodes), "master_addr": master["ip"],
                    "master_port": str(master["port"]), "ifname": place["ifname"], "node_ip": place["ip"],
                    **paths[rank]}

        for rank, actor in enumerate(actors):
            values = values_of(rank)
            env = {k: filled(v, values) for k, v in spec["env"].items()}
            actor.start.remote([[filled(a, values) for a in argv] for argv in spec["argvs"]],
                               {k: v for k, v in env.items() if v})  # no interface found: gloo picks one
        say(f"started on {args.nodes} nodes; node 0's output follows")
        metrics = filled(spec.get("follow", ""), values_of(0))
        follow(actors, places, metrics)
        say("every node finished; node 0 uploads the output")
        ray.get(actors[0].upload.remote(spec["out_to"]), timeout=3600)
        for place, digest in zip(places, ray.get([a.weights_sha256.remote() for a in actors], timeout=600)):
            place["weights_sha256"] = digest
        ray.get([a.clean.remote() for a in actors], timeout=600)
        print(json.dumps({"nodes": places, "out": spec["out_to"]}), flush=True)
    except NodeFailed as e:
        say(f"FAILED: {e}")
        sys.exit(1)
    finally:
        for actor in actors:
            try:
                ray.get(actor.stop.remote(), timeout=30)
            except Exception:  # a lost node's actor: its tree guard takes the command down
                pass
            ray.kill(actor)
        remove_placement_group(group)


def follow(actors: list, places: list[dict], metrics: str = "") -> None:
    """Print node 0's new output (and the new lines of its ``metrics`` file) until every node has exited; a node
    that exits non-zero or is lost raises ``NodeFailed`` naming it, with its log's tail when it can be read."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    offsets = {"": 0, **({metrics: 0} if metrics else {})}

    def echo(last: bool = False) -> None:
        for path in offsets:
            try:
                chunk = ray.get(actors[0].read.remote(offsets[path], path), timeout=ANSWER_TIMEOUT_S)
            except (RayActorError, GetTimeoutError):
                chunk = b""
            complete = chunk if last else chunk[: chunk.rfind(b"\n") + 1]
            offsets[path] += len(complete)
            text = complete.decode("utf-8", errors="replace")
            if path:  # the metrics file's lines, marked for the launcher
                text = "".join(f"{METRICS}{line}\n" for line in text.splitlines())
            elif last and text and not text.endswith("\n"):
                text += "\n"
            if text:
                sys.stdout.write(text)
                sys.stdout.flush()

    while True:
        echo()
        codes = []
        for rank, actor in enumerate(actors):
            try:
                codes.append(ray.get(actor.poll.remote(), timeout=ANSWER_TIMEOUT_S))
            except (RayActorError, GetTimeoutError) as e:
                raise NodeFailed(f"node {rank} ({places[rank]['ip']}) was lost: {type(e).__name__}") from None
        for rank, code in enumerate(codes):
            if code not in (None, 0):
                tail = ray.get(actors[rank].tail.remote(), timeout=ANSWER_TIMEOUT_S)
                raise NodeFailed(f"node {rank} ({places[rank]['ip']}) exited with code {code}; the other nodes "
                                 f"were stopped\n--- node {rank}'s last output ---\n{tail}")
        if all(code == 0 for code in codes):
            echo(last=True)
            return
        time.sleep(POLL_S)


if __name__ == "__main__":
    main()
