"""Training across nodes, measured: the same LLaMA-Factory job (the tiny LLaMA, LoRA SFT, DeepSpeed ZeRO-2) on
1 node x 2 processes (torchrun here: today's one-machine path, the baseline), 2 nodes x 1 process and 2 nodes x 2
processes (``tasks.finetune.nodes`` on a two-node Ray cluster started here on 127.0.0.1, each node with a home of
its own), in one run.

    .venv/bin/python -m bench.multinode                 # 40 steps, per-device batch 8
    .venv/bin/python -m bench.multinode --steps 80 --layouts 1x2 2x1

Needs the stack's bucket (``make up``): the nodes fetch the model and the data from it. For each layout: the wall
time of the launch (for the nodes: staging, placement, each node's fetch, the rendezvous, training, the upload
back) and the trainer's own samples/s (LLaMA-Factory's ``train_samples_per_second``: global samples over its
training time), with ratios against the baseline. Prints and writes ``bench/results/multinode.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "infra" / "models" / "tiny-llama"
DATA = REPO / "infra" / "datasets" / "word_ops.json"
RESULTS = REPO / "bench" / "results"
SAMPLES = re.compile(r"train_samples_per_second\s*=\s*([0-9.]+)")


def cluster(root: Path, cpus: int) -> tuple[str, list[subprocess.Popen]]:
    """A head and a worker node on 127.0.0.1 with ``cpus`` each, the bucket's settings and a home of their own."""
    from tasks.deploy.ray import Distributed, wait_for_nodes
    from tasks.net import free_port
    from tasks.settings import Settings, environ

    s = Settings.load()
    node_env = {"FINEFLOW_S3_ENDPOINT": str(s.s3_endpoint), "FINEFLOW_S3_BUCKET": s.s3_bucket,
                "AWS_ACCESS_KEY_ID": s.s3_access_key.get_secret_value() if s.s3_access_key else "",
                "AWS_SECRET_ACCESS_KEY": s.s3_secret_key.get_secret_value() if s.s3_secret_key else ""}
    port, client, procs = free_port(), free_port(), []
    node = {"num_cpus": cpus, "object_store_memory": 100_000_000}
    head = Distributed(port=port, ray_client_server_port=client, temp_dir=str(root / "ray0"), **node).cmd()
    worker = Distributed(temp_dir=str(root / "ray1"), **node).cmd(master_ip=f"127.0.0.1:{port}")
    for i, command in enumerate((head, worker)):
        with open(root / f"ray{i}.log", "ab") as log:
            procs.append(subprocess.Popen(command.argvs[-1], stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                          env={**environ(), **command.env, **node_env,
                                               "FINEFLOW_HOME": str(root / f"node{i}")}))
        wait_for_nodes(f"127.0.0.1:{port}", i + 1, procs)
    return f"ray://127.0.0.1:{client}", procs


def train(layout: str, address: str, work: Path, steps: int, batch: int, data: tuple[str, str | None]) -> dict:
    from tasks.finetune import llamafactory
    from tasks.finetune.nodes import ClusterSection, launcher_for

    nodes, nproc = (int(n) for n in layout.split("x"))
    target = work / layout
    found: list[float] = []
    launcher = launcher_for(nodes, ClusterSection(address=address, cpus_per_node=nproc, place_timeout_s=120),
                            str(target), ngpus=nproc, log_path=work / f"{layout}.log",
                            on_line=lambda line: found.extend(float(m) for m in SAMPLES.findall(line)))
    trainer = llamafactory(str(MODEL), str(target), launcher=launcher, max_steps=steps,
                           per_device_train_batch_size=batch, gradient_accumulation_steps=1, cutoff_len=128,
                           learning_rate=2e-3, logging_steps=10, save_steps=10_000, report_to="none",
                           preprocessing_num_workers=1, template="default",
                           deepspeed=str(REPO / "infra" / "deepspeed" / "zero2.json"))
    start = time.perf_counter()
    launcher.launch(trainer.train_command(*data), name=f"bench {layout}")
    wall = time.perf_counter() - start
    if not found:
        raise RuntimeError(f"{layout}: no train_samples_per_second in {work / f'{layout}.log'}")
    return {"layout": layout, "nodes": nodes, "processes_per_node": nproc, "wall_s": wall,
            "samples_per_s": found[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8, help="per-device batch size")
    parser.add_argument("--layouts", nargs="+", default=["1x2", "2x1", "2x2"], help="NODESxPROCESSES; first: baseline")
    args = parser.parse_args()
    from tasks import envs
    from tasks.data import load_dataset
    from tasks.finetune import llamafactory
    from tasks.launchers import stop_group

    envs.ensure("llamafactory")
    envs.ensure(envs.RAY)
    with tempfile.TemporaryDirectory(prefix="ffbench-nodes-") as tmp:
        work = Path(tmp)
        records = work / "train.jsonl"
        records.write_text("".join(json.dumps(r) + "\n" for r in load_dataset(str(DATA)).records))
        data = llamafactory(str(MODEL), str(work / "prep"), template="default").prepare_data(
            str(records), None, "alpaca", work / "lf-data")
        address, procs = cluster(work, cpus=2)
        try:
            rows = [train(layout, address, work, args.steps, args.batch, data) for layout in args.layouts]
        finally:
            for proc in reversed(procs):
                stop_group(proc.pid)
    base = rows[0]
    for row in rows:
        row["samples_ratio"] = row["samples_per_s"] / base["samples_per_s"]
        row["wall_ratio"] = row["wall_s"] / base["wall_s"]
        print(f"{row['layout']:>4s}  {row['samples_per_s']:8.1f} samples/s ({row['samples_ratio']:.2f}x)  "
              f"wall {row['wall_s']:6.1f} s ({row['wall_ratio']:.2f}x)", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "multinode.json").write_text(json.dumps({"steps": args.steps, "batch": args.batch, "rows": rows},
                                                       indent=1))
    lines = ["| layout (nodes x processes) | samples/s | vs 1x2 | wall s | vs 1x2 |", "|---|---|---|---|---|"]
    lines += [f"| {r['layout']} | {r['samples_per_s']:.1f} | {r['samples_ratio']:.2f} | {r['wall_s']:.1f} | "
              f"{r['wall_ratio']:.2f} |" for r in rows]
    (RESULTS / "multinode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
