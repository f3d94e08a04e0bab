"""Embedding and rerank serving: sentences/s (pairs/s) at batch 1, 32 and 256, at 1 and 16 concurrent clients.

    .venv/bin/python -m bench.embedding_serving                       # built-in server, Infinity, the baseline
    .venv/bin/python -m bench.embedding_serving --engines builtin     # without Infinity

The embedded models (MiniLM as embedder, MiniLM as cross-encoder), the same sentences for every engine. The
servers are started as the deploy step starts them (detached, behind the API key) and driven over HTTP; the
baseline is sentence-transformers in this process (``encode`` / ``CrossEncoder.predict``, one call per batch,
one after another). A cell is the throughput of ``--items`` sentences (or query-document pairs) sent as requests
of ``batch`` items by ``clients`` clients at once; its ratio is against the baseline at the same batch size (the
baseline has no concurrency: 16 clients of a one-at-a-time encoder see its throughput). The built-in server
batches concurrent requests (``tasks/servers/microbatch.py``): 16 clients sending one sentence each should do
far better than one client doing so. Writes ``bench/results/embedding_serving.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
KEY = "bench-key-0123456789"
BATCHES, CLIENTS = (1, 32, 256), (1, 16)


def sentences(n: int) -> list[str]:
    data = json.loads((REPO / "infra" / "datasets" / "company_facts.json").read_text())
    pool = [p for r in data for p in (*r["pos"], *r["neg"])]
    return [pool[i % len(pool)] for i in range(n)]


def baseline(kind: str, model: str, items: list, batch: int) -> float:
    """Items per second of sentence-transformers in this process, one batch after another."""
    from sentence_transformers import CrossEncoder, SentenceTransformer

    m = CrossEncoder(model, device="cpu") if kind == "rerank" else SentenceTransformer(model, device="cpu")
    run = (lambda chunk: m.predict(chunk, batch_size=batch)) if kind == "rerank" else \
        (lambda chunk: m.encode(chunk, batch_size=batch))
    run(items[:batch])  # warm up
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        run(items[i:i + batch])
    return len(items) / (time.perf_counter() - start)


def drive(url: str, path: str, body, items: list, batch: int, clients: int) -> float:
    """Items per second through ``url + path``: requests of ``batch`` items, ``clients`` in flight (one asyncio
    client with kept-alive connections, so the load generator costs the 2 cores as little as it can)."""
    chunks = [items[i:i + batch] for i in range(0, len(items), batch)]
    headers = {"Authorization": f"Bearer {KEY}"}

    async def run() -> float:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=300, limits=limits) as c:
            gate = asyncio.Semaphore(clients)

            async def send(chunk) -> None:
                async with gate:
                    r = await c.post(f"{url}{path}", json=body(chunk), headers=headers)
                    r.raise_for_status()

            await send(chunks[0])  # warm up
            start = time.perf_counter()
            await asyncio.gather(*(send(chunk) for chunk in chunks))
            return len(items) / (time.perf_counter() - start)

    return asyncio.run(run())


def engines(kind: str, names: list[str]):
    from tasks.deploy import EmbeddingDeploy, Infinity, RerankDeploy

    table = {"builtin": (RerankDeploy if kind == "rerank" else EmbeddingDeploy)(name="bench", max_batch=256),
             "infinity": Infinity(model_type=kind, name="bench", device="cpu", batch_size=256)}
    return {n: table[n] for n in names}


def measure(kind: str, model: str, names: list[str], n_items: int) -> dict:
    from tasks.serving import endpoints

    texts = sentences(n_items + 1)
    items = [(texts[-1], t) for t in texts[:n_items]] if kind == "rerank" else texts[:n_items]
    out: dict = {"baseline": {b: baseline(kind, model, items, b) for b in BATCHES}}
    for name, engine in engines(kind, names).items():
        ep = endpoints.start(f"bench-{kind}-{name}", engine.with_api_key(engine.cmd(model), KEY), engine.engine, model)
        try:
            if kind == "rerank":
                path = "/rerank" if name == "infinity" else "/v1/rerank"
                body = lambda chunk: {"model": "bench", "query": chunk[0][0], "documents": [d for _, d in chunk]}  # noqa: E731
            else:
                path = "/embeddings" if name == "infinity" else "/v1/embeddings"
                body = lambda chunk: {"model": "bench", "input": chunk}  # noqa: E731
            out[name] = {f"{b}x{c}": drive(ep.url, path, body, items, b, c) for b in BATCHES for c in CLIENTS}
        finally:
            endpoints.stop(ep.name)
        print(f"{kind} {name}: " + ", ".join(f"{k} {v:.0f}/s" for k, v in out[name].items()), flush=True)
    return out


def table(kind: str, res: dict) -> str:
    unit = "pairs/s" if kind == "rerank" else "sentences/s"
    rows = [f"| engine | batch | clients | {unit} | ratio to baseline |", "| --- | ---: | ---: | ---: | ---: |"]
    for b in BATCHES:
        rows.append(f"| sentence-transformers in-process (baseline) | {b} | 1 | {res['baseline'][b]:.0f} | 1.00 |")
    for name in (n for n in res if n != "baseline"):
        for b in BATCHES:
            for c in CLIENTS:
                v = res[name][f"{b}x{c}"]
                rows.append(f"| {name} | {b} | {c} | {v:.0f} | {v / res['baseline'][b]:.2f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="builtin,infinity")
    parser.add_argument("--items", type=int, default=512, help="sentences (pairs) per cell")
    args = parser.parse_args()
    from infra.embed_models import EMBED, RERANK
    from tasks import envs
    from tasks.models.local import EMBEDDED_MODELS

    names = args.engines.split(",")
    if "infinity" in names:
        envs.ensure("infinity")
    results = {kind: measure(kind, str(EMBEDDED_MODELS / model), names, args.items)
               for kind, model in (("embed", EMBED), ("rerank", RERANK))}
    report = "\n\n".join(f"## {kind}\n\n{table(kind, res)}" for kind, res in results.items())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embedding_serving.md").write_text(f"# Embedding serving ({args.items} items a cell)\n\n{report}\n")
    (RESULTS / "embedding_serving.json").write_text(json.dumps(results, indent=1, default=str))
    print(report)


if __name__ == "__main__":
    main()
