"""Run one training command on several nodes of a Ray cluster: one actor per node, placed ``STRICT_SPREAD``.

    python -m tasks.servers.ray_nodes --address ray://HEAD:10001 --nodes 2 --cpus 1 --job JOB \\
        --fetch-python /path/to/main/python --spec SPEC.json

The worker's launcher (``tasks.finetune.nodes``) writes the spec: the command's argvs and env with placeholders
(``{ff:NAME}``), the bucket URIs of the files it needs (``stage``), and where the result goes (``out``). Each node
fetches those files with the main environment's storage client and its own credentials (no shared filesystem and
no secret in Ray's control store), fills in its rank, node 0's address and port, its interface for gloo/NCCL, and
its local paths, then runs the command (``tasks.servers.train_node``: one node's share). Node 0's output is
printed here line by line (the step parses its metrics); each checkpoint goes to the bucket as it is saved, every
node's part of it (``mirror``: ``CheckpointMirror``). A node that fails, or is lost, stops the others and ends this
program with that node's name and log tail. On success node 0 uploads its output folder; the last line printed is a
JSON summary.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from tasks.servers.ray_node import CLIENT_SERVER_FAILED, CONNECT_PAUSE_S, CONNECT_RETRIES
from tasks.servers.train_node import NodeRun

POLL_S = 0.5
ANSWER_TIMEOUT_S = 60  # a node whose actor does not answer this long is taken as lost
MIRROR_EVERY_S = 2.0
PEER_CHECKS = 5  # seconds a failed node's peers are watched for one that was lost, the likelier cause
SAY = "[nodes]"
METRICS = "[node 0 metrics] "  # a line of node 0's metrics file, as printed here


def placeholder(name: str) -> str:
    """What each node fills in (its rank, node 0's address, a local path): ``filled``."""
    return "{ff:" + name + "}"


def filled(value: str, values: dict[str, str]) -> str:
    for name, v in values.items():
        value = value.replace(placeholder(name), v)
    return value


def say(message: str) -> None:
    sys.stdout.write(f"{SAY} {message}\n")  # one write: the checkpoint mirror's thread says things too
    sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="ray://HEAD:10001, or the head's GCS host:port")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--cpus", type=float, default=1, help="CPUs each node's share holds")
    parser.add_argument("--gpus", type=float, default=0, help="GPUs each node's share holds")
    parser.add_argument("--job", required=True, help="the job's name (its folder on each node)")
    parser.add_argument("--fetch-python", required=True, help="the main environment's python on every node")
    parser.add_argument("--spec", type=Path, required=True,
                        help="JSON: argvs, env, stage, out_from, out_to, follow, mirror")
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
            time.sleep(CONNECT_PAUSE_S * (attempt + 1))


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
    mirror: CheckpointMirror | None = None
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
                                 max_concurrency=4,  # answers polls while it uploads a checkpoint
                                 scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)
                                 ).remote(args.job, args.fetch_python, i) for i in range(args.nodes)]
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
        if spec.get("mirror"):
            targets = [filled(spec["mirror"]["target"], values_of(rank)) for rank in range(args.nodes)]
            mirror = CheckpointMirror(actors, targets, spec["mirror"]["uri"])
        follow(actors, places, filled(spec.get("follow", ""), values_of(0)))
        if mirror:
            mirror.close()
        say("every node finished; node 0 uploads the output")
        answer(actors[0].upload.remote(spec["out_to"]), 0, places, timeout_s=3600)
        for rank, place in enumerate(places):
            place["weights_sha256"] = answer(actors[rank].weights_sha256.remote(), rank, places, timeout_s=600)
        for rank, actor in enumerate(actors):
            answer(actor.clean.remote(), rank, places, timeout_s=600)
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
        if mirror:  # what was saved just before a failure (not mirrored if a node's part is lost with it)
            mirror.close()
        for actor in actors:
            ray.kill(actor)
        remove_placement_group(group)


class CheckpointMirror:
    """While the nodes train, every ``MIRROR_EVERY_S``: each checkpoint node 0's trainer finished (so every rank
    saved its part: RNG state, ZeRO optimizer partition) goes to ``uri``: hard-linked aside on every node at once
    (the trainer rotates old ones away), then the other nodes' parts and node 0's last, with the marker
    (``tasks.services.checkpoints``). A run after a crash resumes from the newest one."""

    def __init__(self, actors: list, targets: list[str], uri: str):
        self.actors, self.targets, self.uri = actors, targets, uri
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="checkpoint-mirror", daemon=True)
        self.thread.start()

    def sweep(self, last: bool = False) -> None:
        import ray

        node0, others = self.actors[0], self.actors[1:]
        pending = node0.pending_checkpoints.remote(self.targets[0], self.uri, last)
        for name in ray.get(pending, timeout=ANSWER_TIMEOUT_S):
            snapped = ray.get([a.snapshot_checkpoint.remote(t, name) for a, t in zip(self.actors, self.targets)],
                              timeout=ANSWER_TIMEOUT_S)
            if not snapped[0]:
                say(f"{name} was rotated away before it was mirrored")
                continue
            ray.get([a.upload_checkpoint.remote(name, self.uri, True) for a, s in zip(others, snapped[1:]) if s],
                    timeout=3600)
            ray.get(node0.upload_checkpoint.remote(name, self.uri, False), timeout=3600)
            say(f"mirrored {name} to {self.uri} (every node's part)")

    def _sweep_once(self, last: bool = False) -> None:
        try:
            self.sweep(last)
        except Exception as e:  # a node lost, a checkpoint rotated away meanwhile: the next sweep tries again
            say(f"checkpoints not mirrored this time: {type(e).__name__}: {str(e).splitlines()[0][:300]}")

    def _loop(self) -> None:
        while not self.stopped.wait(MIRROR_EVERY_S):
            self._sweep_once()

    def close(self) -> None:
        """Stop, then one last sweep (what was saved at the end); a second call does nothing."""
        if not self.stopped.is_set():
            self.stopped.set()
            self.thread.join()
            self._sweep_once(last=True)


def answer(ref, rank: int, places: list[dict], timeout_s: float = ANSWER_TIMEOUT_S):
    """What node ``rank``'s actor returns for ``ref``; ``NodeFailed`` naming the node when it is lost or silent."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        return ray.get(ref, timeout=timeout_s)
    except (RayActorError, GetTimeoutError) as e:  # ActorUnavailableError (its node unreachable) is one too
        raise NodeFailed(f"node {rank} ({places[rank]['ip']}) was lost: {type(e).__name__}") from None


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
        codes = [answer(actor.poll.remote(), rank, places) for rank, actor in enumerate(actors)]
        for rank, code in enumerate(codes):
            if code not in (None, 0):
                for _ in range(PEER_CHECKS):  # a node that failed because a peer was lost: name the lost one
                    time.sleep(1)
                    for other, actor in enumerate(actors):
                        answer(actor.poll.remote(), other, places, timeout_s=10)
                tail = answer(actors[rank].tail.remote(), rank, places)
                raise NodeFailed(f"node {rank} ({places[rank]['ip']}) exited with code {code}; the other nodes "
                                 f"were stopped\n--- node {rank}'s last output ---\n{tail}")
        if all(code == 0 for code in codes):
            echo(last=True)
            return
        time.sleep(POLL_S)


if __name__ == "__main__":
    main()
