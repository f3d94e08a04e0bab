"""Training across machines: a framework's command run on several nodes of a Ray cluster (``finetune.nodes``).

    finetune:
      framework: alpacalora
      nproc: 1                 # processes on each node
      nodes: 2
      cluster: {address: "ray://HEAD:10001", cpus_per_node: 1, gpus_per_node: 0}

``NodesLauncher`` is the launcher the finetune step gives the framework then (``launcher_for``). For each command:

- a ``torchrun`` argv gets the node flags (torchrun's static rendezvous at node 0: ``--nnodes --node_rank
  --master_addr --master_port``, its single-node ones dropped); a ``python`` argv becomes the same environment's
  torchrun with one process per node; every command also gets ``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT`` and the node's interface for gloo and NCCL in its environment;
- the files it names that are not part of the image (the base model from this worker's cache, the prepared data,
  an earlier run's checkpoints in the output folder) are put in the bucket once, under their content hash;
- ``tasks.servers.ray_nodes`` runs in the ``ray`` environment: one share per node, placed ``STRICT_SPREAD``; each
  node fetches the files with its own credentials, node 0's output streams back here (the step's log and
  metrics, as on one machine), and a node that fails stops the others and fails the step naming it;
- each checkpoint goes to the step's checkpoint URI as it is saved, every node's part of it
  (``mirrors_checkpoints``), from where a run after a crash resumes as on one machine;
- node 0's output folder comes back through the bucket into ``target_path``, where the merge step finds it.

Every node must hold the checkout and the framework environments at the same paths as this worker (one image).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tasks import envs
from tasks.files import open_private, sha256_file, slug
from tasks.launchers import LaunchError, LocalLauncher
from tasks.masking import is_secret_name
from tasks.servers.ray_nodes import METRICS, placeholder
from tasks.servers.train_node import STAGED
from tasks.services import cache, storage
from tasks.settings import REPO_ROOT, Settings, state_dir

# Flags of torchrun's that a command for one machine may carry and a command across nodes sets itself.
NODE_FLAGS = ("--nnodes", "--node_rank", "--node-rank", "--master_addr", "--master-addr", "--master_port",
              "--master-port", "--rdzv_backend", "--rdzv-backend", "--rdzv_endpoint", "--rdzv-endpoint", "--rdzv_id",
              "--rdzv-id", "--rdzv_conf", "--rdzv-conf", "--standalone")
SWITCHES = ("--standalone", "-m", "--module", "--no_python", "--no-python", "--run_path", "--run-path")


class ClusterSection(BaseModel):
    """Where a multi-node finetune runs: a Ray cluster, and what each node's share of it holds."""

    model_config = ConfigDict(extra="forbid")
    address: str = Field(min_length=1)  # ray://HEAD:10001 (the client server), or the head's HOST:PORT from a node
    cpus_per_node: float = Field(1, gt=0, le=1024)
    gpus_per_node: float = Field(0, ge=0, le=64)  # the node's GPUs torchrun's processes use (CUDA_VISIBLE_DEVICES)
    place_timeout_s: float = Field(300, gt=0, le=86_400)  # waiting for N nodes with that much free each


def across_nodes(argv: list[str], nnodes: int) -> list[str]:
    """``argv`` made to join ``nnodes`` nodes: torchrun gets the node flags (its own rendezvous flags dropped), a
    ``python`` command becomes torchrun of its environment with one process per node; another program is left as
    it is (one that starts torchrun itself, as LLaMA-Factory's CLI does, reads the environment ``node_env`` sets)."""
    program = Path(argv[0]).name
    if program.startswith("python"):
        argv = [str(Path(argv[0]).with_name("torchrun")), "--nproc_per_node=1", *argv[1:]]
    elif program != "torchrun":
        return list(argv)
    kept, i = [], 1
    while i < len(argv) and argv[i].startswith("-"):  # torchrun's own options, up to the script or module
        flag, takes_value = argv[i].split("=", 1)[0], argv[i] not in SWITCHES and "=" not in argv[i]
        if flag not in NODE_FLAGS:
            kept += argv[i:i + 1 + takes_value]
        i += 1 + takes_value
    return [argv[0], f"--nnodes={nnodes}", f"--node_rank={placeholder('node_rank')}",
            f"--master_addr={placeholder('master_addr')}", f"--master_port={placeholder('master_port')}",
            *kept, *argv[i:]]


def node_env(nnodes: int) -> dict[str, str]:
    """What every command across nodes is given; ``LOGLEVEL=INFO``: torchrun logs the world its rendezvous made
    (``global_world_sizes=[N]``), in the step's log."""
    ifname = placeholder("ifname")
    return {"NNODES": str(nnodes), "NODE_RANK": placeholder("node_rank"), "MASTER_ADDR": placeholder("master_addr"),
            "MASTER_PORT": placeholder("master_port"), "GLOO_SOCKET_IFNAME": ifname, "NCCL_SOCKET_IFNAME": ifname,
            "LOGLEVEL": "INFO"}


def image_roots() -> tuple[Path, ...]:
    """Folders every node holds at the same path: the checkout and the environments."""
    return (REPO_ROOT.resolve(), envs.root().resolve(), Path(sys.prefix).resolve())


def staged_argvs(argvs: list[list[str]], output: str) -> tuple[list[list[str]], dict[str, str]]:
    """The argvs with each path to stage replaced by a placeholder, and those paths (placeholder name -> path):
    the output folder becomes ``out``; another absolute path that exists here and lies outside ``image_roots``
    is an input (``--flag=PATH`` forms included)."""
    output, roots, inputs = os.path.abspath(output), image_roots(), {}

    def staged(value: str) -> str:
        if value == output or value.startswith(output + "/"):
            return placeholder("out") + value[len(output):]
        if not os.path.isabs(value) or not os.path.exists(value) or \
                any(Path(value).resolve().is_relative_to(root) for root in roots):
            return value
        name = next((n for n, p in inputs.items() if p == value), f"in{len(inputs)}")
        inputs[name] = value
        return placeholder(name)

    def token(arg: str) -> str:  # PATH, --flag=PATH, key=PATH (LLaMA-Factory's overrides of its YAML)
        flag, eq, value = arg.partition("=")
        return f"{flag}={staged(value)}" if eq and (arg.startswith("-") or os.path.isabs(value)) else staged(arg)

    return [[token(a) for a in argv] for argv in argvs], inputs


def stage(path: str, bucket: str, log=print) -> str:
    """``path`` (a folder or a file) in the bucket under its content hash, uploaded once, verified, then marked
    whole; its URI (``URI#NAME`` for a file: the folder holding it, and its name)."""
    p = Path(path)
    digest = cache.fingerprint(p) if p.is_dir() else sha256_file(p)
    uri = f"s3://{bucket}/nodes/inputs/{digest[:40]}"
    if not storage.exists(f"{uri}/{STAGED}"):
        log(f"staging {path} in {uri} for the nodes")
        if p.is_dir():
            storage.upload_dir(p, uri)
            storage.verify_upload(p, uri)
        else:
            storage.upload_file(p, f"{uri}/{p.name}")
        storage.put_objects(uri, [f"{STAGED}\t"])
    return uri if p.is_dir() else f"{uri}#{p.name}"


class NodesLauncher(LocalLauncher):
    """Runs a command on ``nodes`` nodes of ``cluster`` (see the module's docstring); ``ngpus`` is the processes
    per node. ``output`` is the folder the command writes in (the trainer's, holding its ``target_path``)."""

    def __init__(self, cluster: ClusterSection, nodes: int, output: str, log=print, **kw):
        super().__init__(**kw)
        self.cluster, self.nnodes, self.output, self.log = cluster, nodes, output, log
        self.metrics: str | None = None
        self.on_metrics = None
        self.mirror: dict[str, str] = {}
        self.given_on_line, self.on_line = self.on_line, self._line  # the driver's lines pass through _line

    def following(self, path: str | Path | None, on_line):
        """``on_line`` gets the lines node 0 appends to its copy of ``path`` (in the output folder), which the
        driver prints marked among node 0's output."""
        self.metrics, self.on_metrics = (str(path), on_line) if path else (None, None)
        return nullcontext()

    def mirrors_checkpoints(self, target: str | Path, uri: str) -> bool:
        """The checkpoints are written on the nodes (each rank its part): the driver mirrors them from there to
        ``uri`` (each node's copy of ``target``, in its output folder), so a run whose node is lost resumes from
        the last one."""
        staged = self.on_node(target)
        if not staged.startswith(placeholder("out")):
            return False
        self.mirror = {"target": staged, "uri": uri}
        return True

    def on_node(self, path: str | Path) -> str:
        """``path`` as each node names its copy: under the output folder, ``{ff:out}/...``."""
        return staged_argvs([[str(path)]], self.output)[0][0][0]

    def _line(self, line: str) -> None:
        if line.startswith(METRICS):
            if self.on_metrics:
                self.on_metrics(line[len(METRICS):])
        elif self.given_on_line:
            self.given_on_line(line)

    def launch(self, command, name: str = "job"):
        say = self.log
        bucket = Settings.load().s3_bucket
        # In every node's paths: no spaces (LLaMA-Factory's CLI splits its torchrun command on them).
        job = f"{slug(name)}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        argvs, inputs = staged_argvs([across_nodes(a, self.nnodes) for a in command.argvs], self.output)
        follow = self.on_node(self.metrics) if self.metrics else ""
        out = Path(self.output)
        env = {k: v for k, v in {**self.env, **command.env}.items() if not is_secret_name(k)}  # Ray keeps it
        spec = {"argvs": argvs, "env": {**env, **node_env(self.nnodes)},
                "stage": {n: stage(p, bucket, say) for n, p in inputs.items()},
                "out_from": stage(self.output, bucket, say) if out.is_dir() and any(out.iterdir()) else "",
                "out_to": f"s3://{bucket}/nodes/jobs/{job}/out", "follow": follow, "mirror": self.mirror}
        spec_path = state_dir() / "nodes" / f"{job}.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        with open_private(spec_path, "w") as f:
            json.dump(spec, f)
        envs.ensure(envs.RAY, log=say)
        c = self.cluster
        driver = [envs.bin_path(envs.RAY, "python"), "-m", "tasks.servers.ray_nodes", "--address", c.address,
                  "--nodes", str(self.nnodes), "--cpus", str(c.cpus_per_node), "--gpus", str(c.gpus_per_node),
                  "--job", job, "--fetch-python", sys.executable, "--spec", str(spec_path),
                  "--place-timeout-s", str(c.place_timeout_s)]
        try:
            self.run(driver, name=f"{name} on {self.nnodes} nodes", extra_env={
                **envs.path_env(envs.RAY), "PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0"})
        finally:
            spec_path.unlink(missing_ok=True)
        storage.download_dir(spec["out_to"], out)
        if not any(out.iterdir()):
            raise LaunchError(f"{name}: node 0 finished but {spec['out_to']} holds no output")
        storage.delete_prefix(spec["out_to"] + "/")  # here now; the candidate reaches the bucket when it is logged
        return command.return_value


def launcher_for(nodes: int, cluster: ClusterSection | None, output: str, log=print, **kw) -> LocalLauncher:
    """The finetune's launcher: on this machine, or with ``nodes`` > 1 across the cluster's nodes."""
    if nodes > 1:
        if cluster is None:
            raise ValueError("finetune.nodes > 1 needs finetune.cluster.address (the Ray cluster's ray://HEAD:10001)")
        return NodesLauncher(cluster, nodes, output, log=log, **kw)
    return LocalLauncher(**kw)
