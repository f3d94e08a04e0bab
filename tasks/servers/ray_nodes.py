"""Run one training command on several nodes of a Ray cluster: one actor per node, placed ``STRICT_SPREAD``.

    python -m tasks.servers.ray_nodes --address ray://HEAD:10001 --nodes 2 --cpus 1 --job JOB \\
        --fetch-python /path/to/main/python --spec SPEC.json

The worker's launcher (``tasks.finetune.nodes``) writes the spec: the command's argvs and env with placeholders
(``{ff:NAME}``), the bucket URIs of the files it needs (``stage``), and where the result goes (``out``). Each node
fetches those files with the main environment's storage client and its own credentials (no shared filesystem and
no secret in Ray's control store), fills in its rank, node 0's address and port, its interface for gloo/NCCL, and
its local paths, then runs the command (``tasks.servers.train_node``: one node's share). Node 0's output is
printed here line by line (the step parses its metrics), and it mirrors its checkpoints to the bucket
(``mirror``); a node that fails, or is lost, stops the others and ends this program with that node's name and
log tail. On success node 0 uploads its output folder; the last line
printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from tasks.servers.ray_node import CLIENT_SERVER_FAILED, CONNECT_RETRIES
from tasks.servers.train_node import NodeRun

POLL_S = 0.5
ANSWER_TIMEOUT_S = 60  # a node whose actor does not answer this long is taken as lost
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
    print(f"{SAY} {message}", flush=True)


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

        mirror = spec.get("mirror") or {}
        for rank, actor in enumerate(actors):
            values = values_of(rank)
            env = {k: filled(v, values) for k, v in spec["env"].items()}
            actor.start.remote([[filled(a, values) for a in argv] for argv in spec["argvs"]],
                               {k: v for k, v in env.items() if v},  # no interface found: gloo picks one
                               {k: filled(v, values) for k, v in mirror.items()} if mirror and rank == 0 else None)
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
                ray.get(actor.stop.remote(), timeout=60)
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
