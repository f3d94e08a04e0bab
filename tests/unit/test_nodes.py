"""Training across nodes, the parts that need no cluster: the command each node runs, the files staged for it, the
placeholders a node fills in, and the config that asks for it (the two-host run is ``tests/e2e/test_two_hosts.py``).
"""

from __future__ import annotations

import pytest

from tasks import envs
from tasks.finetune import alpacalora
from tasks.finetune.nodes import (ClusterSection, NodesLauncher, across_nodes, launcher_for, node_env, placeholder,
                                  staged_argvs)
from tasks.launchers import LocalLauncher
from tasks.pipeline.config import load_config
from tasks.pipeline.config_files import ConfigError
from tasks.servers.ray_nodes import filled
from tasks.servers.train_node import interface_of
from tests.support.paths import REPO, TINY_MODEL

NODE_FLAGS = ["--nnodes=2", "--node_rank={ff:node_rank}", "--master_addr={ff:master_addr}",
              "--master_port={ff:master_port}"]


def test_a_python_command_becomes_torchrun_of_its_environment_joining_the_nodes():
    python = envs.bin_path("flagembedding", "python")
    assert across_nodes([python, "-m", "mod", "--x", "1"], 2) == \
        [envs.bin_path("flagembedding", "torchrun"), *NODE_FLAGS, "--nproc_per_node=1", "-m", "mod", "--x", "1"]


def test_torchrun_keeps_its_own_options_and_loses_those_of_one_machine():
    torchrun = envs.bin_path(None, "torchrun")
    argv = [torchrun, "--nproc_per_node", "2", "--master_port", "29500", "--standalone", "--rdzv_id=x", "-m", "mod",
            "--master_port", "7"]  # the script's own flag of the same name is left alone
    assert across_nodes(argv, 2) == [torchrun, *NODE_FLAGS, "--nproc_per_node", "2", "-m", "mod", "--master_port",
                                     "7"]
    script = [torchrun, "--nproc_per_node=4", "--node_rank=3", "train.py"]
    assert across_nodes(script, 3)[1:] == ["--nnodes=3", *NODE_FLAGS[1:], "--nproc_per_node=4", "train.py"]


def test_another_program_is_left_to_read_the_node_environment():
    assert across_nodes(["llamafactory-cli", "train", "c.yaml"], 2) == ["llamafactory-cli", "train", "c.yaml"]
    env = node_env(2)
    assert env["NNODES"] == "2" and env["NODE_RANK"] == placeholder("node_rank")
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == placeholder("ifname")


def test_paths_outside_the_image_are_staged_and_the_output_folder_is_the_nodes_own(tmp_path):
    data, model, out = tmp_path / "train.jsonl", tmp_path / "base", tmp_path / "out"
    data.write_text("{}\n")
    model.mkdir()
    script = str(REPO / "tasks" / "finetune" / "train_lora.py")  # the checkout: at the same path on every node
    argvs = [["py", script, "--base_model", str(model), f"--data_path={data}", "--output_dir", f"{out}/lora",
              "--missing", str(tmp_path / "nothing"), "relative.json"],
             ["py", "merge", str(model), str(out)]]
    staged, inputs = staged_argvs(argvs, str(out))
    assert staged == [["py", script, "--base_model", "{ff:in0}", "--data_path={ff:in1}", "--output_dir",
                       "{ff:out}/lora", "--missing", str(tmp_path / "nothing"), "relative.json"],
                      ["py", "merge", "{ff:in0}", "{ff:out}"]]
    assert inputs == {"in0": str(model), "in1": str(data)}
    assert staged_argvs([[str(TINY_MODEL)]], str(out)) == ([[str(TINY_MODEL)]], {})  # in the checkout: not staged


def test_a_node_fills_in_its_own_values():
    values = {"node_rank": "1", "master_addr": "10.0.0.2", "master_port": "29500", "in0": "/n/stage/x"}
    assert filled("--node_rank={ff:node_rank}", values) == "--node_rank=1"
    assert filled("{ff:master_addr}:{ff:master_port}", values) == "10.0.0.2:29500"
    assert filled("{ff:in0}/train.jsonl", values) == "/n/stage/x/train.jsonl"
    assert filled("{ff:unknown}", values) == "{ff:unknown}"
    assert interface_of("127.0.0.1") == "lo" and interface_of("203.0.113.77") == ""


def test_the_launcher_is_the_cluster_only_for_more_than_one_node(tmp_path):
    cluster = ClusterSection(address="ray://10.0.0.1:10001")
    assert type(launcher_for(1, cluster, str(tmp_path), ngpus=2)) is LocalLauncher
    many = launcher_for(2, cluster, str(tmp_path), ngpus=2)
    assert isinstance(many, NodesLauncher) and (many.nnodes, many.ngpus) == (2, 2)
    trainer = alpacalora(str(TINY_MODEL), str(tmp_path / "t"), launcher=many)
    assert trainer.train_command("d.jsonl").argvs[0][0].endswith("torchrun")  # 2 per node: torchrun already
    with pytest.raises(ValueError, match="finetune.cluster.address"):
        launcher_for(2, None, str(tmp_path))


def test_across_nodes_the_nodes_mirror_the_checkpoints_and_on_one_machine_the_step_does(tmp_path):
    cluster, uri = ClusterSection(address="ray://10.0.0.1:10001"), "s3://b/checkpoints/key"
    assert not launcher_for(1, cluster, str(tmp_path)).mirrors_checkpoints(tmp_path / "lora", uri)
    many = launcher_for(2, cluster, str(tmp_path))
    assert many.mirrors_checkpoints(tmp_path / "lora", uri)
    assert many.mirror == {"target": "{ff:out}/lora", "uri": uri}  # node 0's copy of the folder
    assert not launcher_for(2, cluster, str(tmp_path)).mirrors_checkpoints(tmp_path.parent / "elsewhere", uri)


def test_a_frameworks_torch_extensions_are_kept_with_its_environment():
    dirs = envs.path_env("llamafactory")["TORCH_EXTENSIONS_DIR"], envs.path_env(envs.MAIN)["TORCH_EXTENSIONS_DIR"]
    assert dirs[0] == str(envs.env_dir("llamafactory") / "torch-extensions") and dirs[1] != dirs[0]


def test_llamafactory_across_nodes_names_its_paths_as_overrides_and_starts_torchrun_itself(tmp_path):
    from tasks.finetune import llamafactory

    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text('{"train": {"file_name": "train.json"}}')
    launcher = launcher_for(2, ClusterSection(address="ray://h:10001"), str(tmp_path / "finetune"), ngpus=1)
    trainer = llamafactory(str(TINY_MODEL), str(tmp_path / "finetune"), launcher=launcher, template="default")
    command = trainer.train_command(str(data))
    argv = command.argvs[0]
    assert argv[1] == "train" and argv[3:] == [f"model_name_or_path={TINY_MODEL}", f"dataset_dir={data}",
                                                f"output_dir={tmp_path}/finetune/lazyllm_lora"]
    assert command.env["FORCE_TORCHRUN"] == "1" and command.env["NPROC_PER_NODE"] == "1"
    staged, inputs = staged_argvs(command.argvs, str(tmp_path / "finetune"))
    assert staged[0][2:] == ["{ff:out}/llamafactory/train.yaml", f"model_name_or_path={TINY_MODEL}",
                             "dataset_dir={ff:in0}", "output_dir={ff:out}/lazyllm_lora"]
    one = llamafactory(str(TINY_MODEL), str(tmp_path / "one"), template="default")
    assert one.train_command(str(data)).argvs[0][3:] == [] and "FORCE_TORCHRUN" not in one.command_env()


def test_flagembedding_shares_negatives_across_the_nodes_processes(tmp_path):
    from tasks.finetune import flagembedding

    model = str(REPO / "infra" / "models" / "all-minilm-l6-v2")
    across = launcher_for(2, ClusterSection(address="ray://h:10001"), str(tmp_path), ngpus=1)
    assert "--negatives_cross_device" in flagembedding(model, str(tmp_path), launcher=across).train_args("t.jsonl")
    alone = flagembedding(model, str(tmp_path), launcher=launcher_for(1, None, str(tmp_path), ngpus=1))
    assert "--negatives_cross_device" not in alone.train_args("t.jsonl")


HEAD = "name: x\nregistry: {model_name: m}\ndata: {path: infra/datasets/d.json}\n"


@pytest.mark.parametrize("finetune, error", [
    ("{nodes: 2}", r"bad.yaml: finetune.alpacalora: nodes: 2 needs cluster.address: the Ray cluster to train on"),
    ("{framework: collie, nodes: 2, cluster: {address: 'ray://h:10001'}}",
     r"nodes: 2: collie cannot train across nodes yet \(those that can: alpacalora, flagembedding, llamafactory\)"),
    ("{nodes: 2, cluster: {address: 'ray://h:10001', cpus_per_node: 0}}", r"cpus_per_node: Input should be greater"),
    ("{nodes: 0}", r"finetune.alpacalora.nodes: Input should be greater than or equal to 1"),
])
def test_a_config_across_nodes_is_checked_when_it_loads(tmp_path, finetune, error):
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD + f"finetune: {finetune}\n")
    with pytest.raises(ConfigError, match=error):
        load_config(path)


def test_a_config_across_nodes_loads_and_its_plan_says_where(tmp_path):
    from tasks.pipeline.plan import across_nodes as described

    path = tmp_path / "p.yaml"
    path.write_text(HEAD + "finetune: {nproc: 2, nodes: 3, cluster: {address: 'ray://10.0.0.1:10001', "
                           "gpus_per_node: 2}}\n")
    section = load_config(path).finetune
    assert (section.nodes, section.nproc, section.cluster.gpus_per_node) == (3, 2, 2)
    assert described(section) == " on each of 3 nodes of the Ray cluster at ray://10.0.0.1:10001 (tasks.finetune.nodes)"


def test_two_nodes_of_one_job_on_one_machine_keep_apart():
    """Two Ray nodes on one machine (a local cluster) share its FINEFLOW_HOME: each share has its own folder."""
    import sys

    from tasks.servers.train_node import NodeRun

    first, second = NodeRun("job-x", sys.executable, 0), NodeRun("job-x", sys.executable, 1)
    assert first.dir != second.dir and (first.dir / "out").is_dir() and (second.dir / "out").is_dir()


def test_node_0_asks_for_pending_checkpoints_only_when_a_checkpoint_folder_changed(tmp_path, monkeypatch):
    """The question starts a process and lists the bucket (``tasks.services.checkpoints pending``, run against the
    real bucket in tests/e2e/test_resume.py): beside the training it is asked again only after a checkpoint folder,
    or a file in one, appeared; the last sweep always asks."""
    import os
    import sys

    from tasks.servers.train_node import NodeRun

    node, asked = NodeRun("job-pending", sys.executable, 0), []
    monkeypatch.setattr(node, "_main_env", lambda *args: asked.append(args) or '["checkpoint-5"]')
    target = tmp_path / "out"
    assert node.pending_checkpoints(str(target), "s3://b/c") == [] and asked == []  # nothing saved yet
    (target / "checkpoint-5").mkdir(parents=True)
    assert node.pending_checkpoints(str(target), "s3://b/c") == ["checkpoint-5"] and len(asked) == 1
    assert node.pending_checkpoints(str(target), "s3://b/c") == [] and len(asked) == 1  # unchanged
    (target / "checkpoint-5" / "trainer_state.json").write_text("{}")
    os.utime(target / "checkpoint-5", ns=(1, 1))  # as the file's creation moves it (same-tick safe here)
    assert node.pending_checkpoints(str(target), "s3://b/c") == ["checkpoint-5"] and len(asked) == 2
    assert node.pending_checkpoints(str(target), "s3://b/c", force=True) == ["checkpoint-5"] and len(asked) == 3


def test_a_checkpoint_snapshot_outlives_the_trainer_rotating_the_folder_away(tmp_path):
    import shutil
    import sys

    from tasks.servers.train_node import NodeRun

    node, target = NodeRun("job-snapshot", sys.executable, 1), tmp_path / "out"
    (target / "checkpoint-5" / "global_step5").mkdir(parents=True)
    (target / "checkpoint-5" / "global_step5" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"part")
    assert node.snapshot_checkpoint(str(target), "checkpoint-5")
    shutil.rmtree(target / "checkpoint-5")  # save_total_limit: the trainer removes it while it would upload
    snapshot = node.dir / "mirror" / "checkpoint-5" / "global_step5" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    assert snapshot.read_bytes() == b"part"
    assert not node.snapshot_checkpoint(str(target), "checkpoint-9")  # no part of it on this node
