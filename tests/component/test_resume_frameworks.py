"""LLaMA-Factory and FlagEmbedding resume a crashed training: each really trains in its own environment, is killed
with SIGKILL once a checkpoint is saved, and the next ``train_command`` resumes from that checkpoint; the steps after
it give the losses and the final weights an uninterrupted run gives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from infra.embed_models import EMBED
from tasks import envs, launchers
from tasks.data import read_jsonl
from tasks.finetune import FlagembeddingFinetune, LlamafactoryFinetune
from tasks.models.local import EMBEDDED_MODELS
from tasks.services.checkpoints import COMPLETE
from tests.support.paths import TINY_MODEL

LF = dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=2e-3, lora_r=8,
          cutoff_len=128, logging_steps=1, save_steps=6, preprocessing_num_workers=1, report_to="none",
          warmup_ratio=0.0, max_steps=18, eval_strategy="no", lr_scheduler_type="linear")
FE = dict(max_steps=12, save_steps=4, logging_steps=1, query_instruction_for_retrieval="", train_group_size=2,
          query_max_len=16, passage_max_len=32, per_device_train_batch_size=4, gradient_checkpointing=False,
          learning_rate=1e-4)


def kill_after_checkpoint(command, target: Path, step: int, log: Path, timeout_s: float = 600) -> None:
    """Start ``command`` and SIGKILL its whole process group as soon as ``checkpoint-<step>`` is saved (its
    trainer state written), mid-run."""
    with log.open("ab") as out:
        proc = subprocess.Popen(command.argvs[0], env={**launchers.child_environment(), **command.env},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    state = target / f"checkpoint-{step}" / "trainer_state.json"
    deadline = time.monotonic() + timeout_s
    while not state.exists():
        assert proc.poll() is None, f"training ended before checkpoint-{step}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def run_whole(command, log: Path) -> str:
    launchers.local(log_path=log).launch(command, name="train")
    return log.read_text()


def test_llamafactory_resumes_a_killed_run_where_it_stopped(tmp_path, small_dataset):
    def trainer(where: Path) -> LlamafactoryFinetune:
        return LlamafactoryFinetune(str(TINY_MODEL), str(where), **LF)

    crashed, whole = trainer(tmp_path / "crashed"), trainer(tmp_path / "whole")
    envs.ensure(crashed.environment)
    data = [crashed.prepare_data(small_dataset.train_path, small_dataset.val_path, small_dataset.format,
                                 tmp_path / f"data-{i}") for i in range(2)]
    target = Path(crashed.target_path)
    kill_after_checkpoint(crashed.train_command(*data[0]), target, 6, tmp_path / "crashed.log")
    assert not (target / "adapter_model.safetensors").exists()  # the kill came before the end

    resumed = crashed.train_command(*data[0])  # as the pipeline's next run builds it
    config = (Path(resumed.argvs[0][2])).read_text()
    step = max(int(json.loads(p.read_text())["global_step"]) for p in target.glob("checkpoint-*/trainer_state.json"))
    assert f"resume_from_checkpoint: {target}/checkpoint-{step}" in config and (target / f"checkpoint-{step}" /
                                                                              COMPLETE).is_file()
    text = run_whole(resumed, tmp_path / "resumed.log")
    assert f"Resuming training from checkpoint with epoch 0 and global step {step}" in text
    run_whole(whole.train_command(*data[1]), tmp_path / "whole.log")

    after = {r["current_steps"]: r["loss"] for r in read_jsonl(target / "trainer_log.jsonl") if "loss" in r}
    reference = {r["current_steps"]: r["loss"] for r in read_jsonl(Path(whole.target_path) / "trainer_log.jsonl")
                 if "loss" in r}
    resumed_steps = sorted(s for s in after if s > step)
    assert resumed_steps == list(range(step + 1, LF["max_steps"] + 1))
    for s in resumed_steps:  # the loss curve goes on as if nothing had happened
        assert after[s] == pytest.approx(reference[s], rel=1e-3, abs=1e-4), (s, after[s], reference[s])
    ours, theirs = (load_file(Path(t.target_path) / "adapter_model.safetensors") for t in (crashed, whole))
    assert ours.keys() == theirs.keys()
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-5) for k in ours)


def test_flagembedding_resumes_a_killed_run_with_its_weights(tmp_path):
    # One negative per query (the group size is 2): FlagEmbedding draws negatives at random as it builds a batch,
    # and transformers restores the random state only after the first resumed batch is built, so with more to draw
    # from, a resumed run's batches differ from an uninterrupted run's. Here they cannot, and the runs must agree.
    records = [{**r, "neg": r["neg"][:1]} for r in
               json.loads((EMBEDDED_MODELS.parent / "datasets" / "company_facts.json").read_text())[:64]]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records))

    def trainer(where: Path) -> FlagembeddingFinetune:
        return FlagembeddingFinetune(EMBED, str(where / "out"), launcher=launchers.local(), **FE)

    crashed, whole = trainer(tmp_path / "crashed"), trainer(tmp_path / "whole")
    envs.ensure(crashed.environment)
    target = Path(crashed.target_path)
    kill_after_checkpoint(crashed.train_command(str(train)), target, 4, tmp_path / "crashed.log")
    (target / "stale-file").write_text("left by the crashed run")

    resumed = crashed.train_command(str(train))  # overwrite_output_dir (the default) keeps only the checkpoint
    step = max(int(p.name.split("-")[1]) for p in target.glob("checkpoint-*"))
    argv = resumed.argvs[0]
    assert argv[argv.index("--resume_from_checkpoint") + 1] == str(target / f"checkpoint-{step}")
    assert [p.name for p in target.iterdir()] == [f"checkpoint-{step}"]
    text = run_whole(resumed, tmp_path / "resumed.log")
    reference_text = run_whole(whole.train_command(str(train)), tmp_path / "whole.log")

    def losses(log: str, t: FlagembeddingFinetune) -> dict[int, float]:
        found = [m for m in map(t.parse_metrics, log.splitlines()) if m and "loss" in m]
        return {m["step"]: m["loss"] for m in found}

    after, reference = losses(text, crashed), losses(reference_text, whole)
    assert sorted(after) == list(range(step + 1, FE["max_steps"] + 1)), sorted(after)
    for s in after:
        assert after[s] == pytest.approx(reference[s], rel=1e-3, abs=1e-4), (s, after[s], reference[s])
    ours, theirs = (load_file(Path(t.target_path) / "model.safetensors") for t in (crashed, whole))
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-5) for k in ours)
