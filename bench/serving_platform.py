"""Serving platforms: the same model behind its stable URL on the local platform and on Ray Serve (1 and 2 replicas
over two nodes), at 1, 4 and 16 concurrent clients, and the time a promotion takes on each.

    .venv/bin/python -m bench.serving_platform
    .venv/bin/python -m bench.serving_platform --requests 16 --concurrency 1 4

The model is the embedded tiny LLaMA served by the built-in server (``relay``), started by each platform as a
pipeline's deploy step starts it (behind the API key); requests go to the model@alias URL (the local router, or
Serve's proxy and the alias route), each generating exactly ``--tokens`` tokens (``ignore_eos``). A promotion is
timed from "candidate ready" (its endpoint answers) to "route moved" (``switch``: new requests reach it) and to
"old version gone" (``retire``: drained and stopped). The Ray cluster is a head and a worker node on this machine
(``Distributed``), started and stopped here. Ratios are against the local platform in the same run; results in
``bench/results/serving_platform.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.llm_serving import MODEL, RESULTS, THREADS, prompts

MODEL_NAME = "bench-platform"


async def drive(url: str, headers: dict, texts: list[str], tokens: int, concurrency: int) -> dict:
    """Every prompt, ``concurrency`` at a time: output tokens/s over the wall time, p50/p95 request latency."""
    import httpx

    limit, latencies, counted = asyncio.Semaphore(concurrency), [], []

    async def one(client: httpx.AsyncClient, text: str) -> None:
        async with limit:
            start = time.perf_counter()
            r = await client.post(f"{url}/v1/completions", json={
                "model": "tiny", "prompt": text, "max_tokens": tokens, "temperature": 0, "ignore_eos": True})
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)
            counted.append(r.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(headers=headers, timeout=600,
                                 limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        await one(client, texts[0])  # warm up
        latencies.clear()
        counted.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one(client, t) for t in texts))
        wall = time.perf_counter() - start
    assert counted == [tokens] * len(texts), f"every request must generate {tokens} tokens: {counted}"
    q = statistics.quantiles(latencies, n=20)
    return {"tokens_per_s": tokens * len(texts) / wall, "p50_s": statistics.median(latencies), "p95_s": q[18]}


def ray_cluster(root: str) -> tuple[str, list[subprocess.Popen]]:
    """The local stack's Ray cluster (``infra.ray_cluster``: a head and a worker node on 127.0.0.1), started here."""
    from infra import ray_cluster as stack_cluster
    from tasks.deploy.ray import wait_for_nodes
    from tasks.net import free_port
    from tasks.settings import environ

    port, procs = free_port(), []
    with open(f"{root}/ray.log", "ab") as log:
        for _, command in stack_cluster.nodes(Path(root), port, {}):
            procs.append(subprocess.Popen(command.argvs[-1], env={**environ(), **command.env}, stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
            wait_for_nodes(f"127.0.0.1:{port}", len(procs), procs)
    return f"127.0.0.1:{port}", procs


def measure(platform, label: str, texts: list[str], args) -> tuple[list[dict], dict]:
    """Serve v1 behind the alias, drive it, then promote v2 (timed): (rows, promotion timings)."""
    from tasks.deploy import RelayServer
    from tasks.services import keys

    relaunch = {"deploy": {"backend": "relay", "serving": platform.section.model_dump(mode="json")},
                "prompt_style": "alpaca"}
    engine = RelayServer(name="tiny", max_batch=16, threads=THREADS)
    v1 = platform.start(f"{MODEL_NAME}-v1", engine.cmd(str(MODEL)), engine, str(MODEL), "", True, relaunch)
    url = platform.route(MODEL_NAME, "production", v1)
    platform.switch(MODEL_NAME, "production", v1, "1")
    rows = []
    for c in args.concurrency:
        r = asyncio.run(drive(url, keys.auth_headers(), texts, args.tokens, c))
        rows.append({"platform": label, "concurrency": c, **r})
        print(f"{label:24s} c={c:<3d} {r['tokens_per_s']:8.1f} tok/s  p50 {r['p50_s'] * 1000:7.0f} ms  "
              f"p95 {r['p95_s'] * 1000:7.0f} ms", flush=True)
    v2 = platform.start(f"{MODEL_NAME}-v2", engine.cmd(str(MODEL)), engine, str(MODEL), "", True, relaunch)
    start = time.perf_counter()
    old = platform.switch(MODEL_NAME, "production", v2, "2")
    moved = time.perf_counter() - start
    platform.retire(MODEL_NAME, "production", v1.name, old, print)
    gone = time.perf_counter() - start
    platform.stop(v2.name)
    print(f"{label:24s} promotion: route moved in {moved:.2f} s, old version gone in {gone:.2f} s", flush=True)
    return rows, {"platform": label, "route_moved_s": moved, "old_gone_s": gone}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="ffbench-")
    os.environ["FINEFLOW_HOME"] = root
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(name, None)
    from tasks.launchers import stop_group
    from tasks.net import free_port
    from tasks.serving import platforms
    from tasks.serving.endpoints import stop_all

    texts = prompts(args.requests)
    rows, promotions = [], []
    try:
        r, p = measure(platforms.platform(None), "local", texts, args)
        rows += r
        promotions.append(p)
    finally:
        stop_all()
    address, procs = ray_cluster(root)
    http = f"127.0.0.1:{free_port()}"  # the cluster's first Serve start decides where its proxy listens
    try:
        for replicas in (1, 2):
            section = {"platform": "ray", "address": address, "http": http, "replicas": replicas}
            platform = platforms.platform(section)
            try:
                r, p = measure(platform, f"ray, {replicas} replica(s)", texts, args)
            finally:
                for name in platform.applications():
                    platform.stop(name)
            rows += r
            promotions.append(p)
    finally:
        for proc in reversed(procs):
            stop_group(proc.pid)
    local = {row["concurrency"]: row for row in rows if row["platform"] == "local"}
    for row in rows:
        row["vs_local"] = row["tokens_per_s"] / local[row["concurrency"]]["tokens_per_s"]
    lines = [f"# Serving platforms: {args.requests} requests of {args.tokens} tokens, tiny LLaMA, built-in server, "
             "2-core CPU, both Ray nodes on this machine", "",
             "| platform | concurrent | output tok/s | p50 | p95 | tok/s vs local |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['platform']} | {r['concurrency']} | {r['tokens_per_s']:.1f} | {r['p50_s'] * 1000:.0f} ms | "
              f"{r['p95_s'] * 1000:.0f} ms | {r['vs_local']:.2f}x |" for r in rows]
    lines += ["", "| platform | candidate ready -> route moved | -> old version drained and gone |",
              "| --- | ---: | ---: |"]
    lines += [f"| {p['platform']} | {p['route_moved_s']:.2f} s | {p['old_gone_s']:.2f} s |" for p in promotions]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving_platform.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "serving_platform.json").write_text(json.dumps({"args": vars(args), "rows": rows,
                                                                "promotions": promotions}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
