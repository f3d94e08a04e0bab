"""The cost of a shadow canary on the production path: client latency through the model@alias route with and
without 25% of the requests copied to a candidate, at 16 concurrent clients, on either serving platform.

    .venv/bin/python -m bench.canary                       # 3 rounds of 64 requests of 16 tokens, each way
    .venv/bin/python -m bench.canary --rounds 5 --requests 96 --share 0.5
    .venv/bin/python -m bench.canary --platform ray        # Serve's alias route, on a two-node cluster here

Production and the candidate are the embedded tiny LLaMA on the built-in server, each started as a deploy step
starts it (behind the API key); the route is the platform's (``local``: the router; ``ray``: Serve's proxy and
the alias route, copying through Serve, pairs kept in an actor); the canary is switched on and off as a
promotion does (``tasks.serving.canary``'s mirror), a new pairs file per round, and the copies of one round are
waited for before the next begins. Rounds alternate off/on so drift hits both alike.

``--cores separate`` (default, local only) pins production's server to CPU 0 and the candidate's to CPU 1: the
candidate on hardware of its own, as in a deployment, so what is measured is the router's copying. ``--cores
shared`` leaves both on every CPU: on a 2-core machine the candidate's decoding then competes with production's
(always so on Ray, whose two nodes share this machine). Prints and writes ``bench/results/canary[-ray].{md,json}``:
p50/p95 client latency and throughput, and the ratios with / without.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.llm_serving import MODEL as TINY_MODEL
from bench.llm_serving import RESULTS, prompts
from bench.serving_platform import drive

NAME, ALIAS = "bench-canary", "production"


def start(name: str, cpu: int | None):
    import psutil

    from tasks.deploy import RelayServer
    from tasks.services import keys
    from tasks.serving import endpoints

    engine = RelayServer(name="tiny")
    ep = endpoints.start(name, engine.with_api_key(engine.cmd(str(TINY_MODEL)), keys.api_key()), "relay",
                         str(TINY_MODEL), api_key_file=str(keys.key_path()))
    if cpu is not None and cpu < (os.cpu_count() or 1):
        for proc in [psutil.Process(ep.pid), *psutil.Process(ep.pid).children(recursive=True)]:
            os.sched_setaffinity(proc.pid, {cpu})
    return ep


def copies_done(platform, pairs: Path, timeout_s: float = 180) -> int:
    """Wait until the route's copies are all kept (no new pair between two reads a second apart); how many."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline:
        n = len(platform.mirrored(NAME, ALIAS, str(pairs)))
        if n == last:
            return n
        last = n
        time.sleep(1.0)
    return last


def serve_ray(root: str):
    """Production and the candidate as Ray Serve applications (one replica each) on a two-node cluster here:
    (platform, production, candidate, stop)."""
    from bench.serving_platform import ray_cluster
    from tasks.deploy import RelayServer
    from tasks.launchers import stop_group
    from tasks.net import free_port
    from tasks.serving import platforms

    address, procs = ray_cluster(root)
    platform = platforms.platform({"platform": "ray", "address": address, "http": f"127.0.0.1:{free_port()}"})
    relaunch = {"deploy": {"backend": "relay", "serving": platform.section.model_dump(mode="json")},
                "prompt_style": "alpaca"}
    engine = RelayServer(name="tiny")

    def stop() -> None:
        try:
            for name in platform.applications():
                platform.stop(name)
        finally:
            for proc in reversed(procs):
                stop_group(proc.pid)

    try:
        production, candidate = (platform.start(f"bench-canary-{role}", engine.cmd(str(TINY_MODEL)), engine,
                                                str(TINY_MODEL), "", True, relaunch)
                                 for role in ("production", "candidate"))
    except BaseException:  # the cluster is not left running
        stop()
        raise
    return platform, production, candidate, stop


def serve_local(cores: str):
    from tasks.serving import endpoints, platforms

    production = start("bench-canary-production", 0 if cores == "separate" else None)
    candidate = start("bench-canary-candidate", 1 if cores == "separate" else None)

    def stop() -> None:
        for name in ("bench-canary-production", "bench-canary-candidate", f"router-{NAME}-{ALIAS}"):
            endpoints.stop(name)

    return platforms.platform(None), production, candidate, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--share", type=float, default=0.25)
    parser.add_argument("--cores", choices=("separate", "shared"), default="separate")
    parser.add_argument("--platform", choices=("local", "ray"), default="local")
    args = parser.parse_args()
    if args.platform == "ray":
        args.cores = "shared"  # both Ray nodes on this machine: no core of its own for the candidate
    root = os.environ["FINEFLOW_HOME"] = tempfile.mkdtemp(prefix="fineflow-bench-canary-")
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(name, None)
    from tasks.services import keys
    from tasks.serving.canary import pairs_path

    keys.api_key()  # made now: a Ray replica reads it on its node as it starts
    platform, production, candidate, stop = serve_ray(root) if args.platform == "ray" else \
        serve_local(args.cores)
    texts, headers, runs = prompts(args.requests), keys.auth_headers(), {"off": [], "on": []}
    try:
        url = platform.route(NAME, ALIAS, production)
        platform.switch(NAME, ALIAS, production, "1")
        for i in range(args.rounds):
            for mode in ("off", "on"):
                pairs = pairs_path(NAME, f"round-{i}")
                if mode == "on":
                    platform.mirror(NAME, ALIAS, candidate, {"share": args.share, "pairs": str(pairs),
                                                              "max_pairs": 100_000})
                r = asyncio.run(drive(url, headers, texts, args.tokens, args.concurrency))
                r["copies"] = copies_done(platform, pairs) if mode == "on" else 0
                platform.mirror(NAME, ALIAS, candidate, None)
                runs[mode].append(r)
                print(f"round {i} canary {mode:3s}: p50 {r['p50_s'] * 1000:7.1f} ms  p95 {r['p95_s'] * 1000:7.1f} ms  "
                      f"{r['tokens_per_s']:6.1f} tok/s  copies {r['copies']}", flush=True)
    finally:
        stop()
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("p50_s", "p95_s", "tokens_per_s")}
           for m, rs in runs.items()}
    ratio = {k: med["on"][k] / med["off"][k] for k in ("p50_s", "p95_s", "tokens_per_s")}
    lines = [f"# Shadow canary on the production path ({args.platform} platform): {args.share:.0%} copied, "
             f"{args.concurrency} clients, {args.requests} requests x {args.tokens} tokens, {args.rounds} rounds "
             f"each, cores {args.cores}", "",
             "| canary | p50 latency | p95 latency | output tok/s |", "| --- | ---: | ---: | ---: |"]
    for m in ("off", "on"):
        lines.append(f"| {m} | {med[m]['p50_s'] * 1000:.1f} ms | {med[m]['p95_s'] * 1000:.1f} ms "
                     f"| {med[m]['tokens_per_s']:.1f} |")
    lines += ["", f"on / off: p50 {ratio['p50_s']:.3f}, **p95 {ratio['p95_s']:.3f}**, throughput "
                  f"{ratio['tokens_per_s']:.3f} (medians over rounds; copies per round: "
                  f"{[r['copies'] for r in runs['on']]})"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = "canary" if args.platform == "local" else f"canary-{args.platform}"
    (RESULTS / f"{out}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{out}.json").write_text(json.dumps({"args": vars(args), "runs": runs, "ratio": ratio}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
