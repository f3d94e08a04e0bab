"""Real LoRA training on the embedded tiny model: a few steps, resume, merge, weights moved."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tasks import launchers
from tasks.data import prepare
from tasks.finetune import AlpacaloraFinetune
from tasks.finetune.base import parse_metric_line
from tasks.finetune.merge import weight_delta
from tests.support.paths import DATASET, TINY_MODEL

PARAMS = dict(batch_size=4, micro_batch_size=4, learning_rate=2e-3, lora_r=4, logging_steps=2, save_steps=4,
              lora_target_modules="[q_proj,v_proj]", modules_to_save="[]")


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    records = json.loads(DATASET.read_text())[:60]
    path = tmp_path_factory.mktemp("data") / "small.json"
    path.write_text(json.dumps(records))
    return prepare(path, path.parent / "prepared", val_set_size=8)


def train(target: Path, data, max_steps: int, lines: list[str]):
    trainer = AlpacaloraFinetune(str(TINY_MODEL), str(target), launcher=launchers.local(on_line=lines.append),
                                 max_steps=max_steps, **PARAMS)
    return trainer, trainer(data.train_path, data.val_path)


def test_train_resume_and_merge(tmp_path, small_dataset):
    lines: list[str] = []
    trainer, merged = train(tmp_path, small_dataset, 8, lines)
    metrics = [m for m in map(parse_metric_line, lines) if m]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert [m["step"] for m in metrics if "loss" in m] == [2, 4, 6, 8] and all(l > 0 for l in losses)
    assert any("eval_loss" in m for m in metrics)
    assert (Path(trainer.target_path) / "adapter_model.safetensors").exists()
    assert sorted(p.name for p in Path(trainer.target_path).glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]

    # The merge step: tokenizer files copied (cp_files='tokeniz*'), weights differ from the base.
    assert merged == trainer.merge_path
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in Path(merged).iterdir()}
    assert weight_delta(str(TINY_MODEL), merged) > 0
    base, new = load_file(TINY_MODEL / "model.safetensors"), load_file(Path(merged) / "model.safetensors")
    assert set(base) == set(new)  # a plain model again: no lora_ tensors left

    # A rerun with more steps resumes from the newest checkpoint instead of starting over.
    lines.clear()
    train(tmp_path, small_dataset, 12, lines)
    assert any("resuming from" in l and "checkpoint-8" in l for l in lines)
    steps = [m["step"] for m in map(parse_metric_line, lines) if m and "loss" in m]
    assert steps == [10, 12]

    # A checkpoint the trainer was killed while writing (no completion mark) is removed, never resumed from.
    target = Path(trainer.target_path)
    assert all((target / c / "fineflow_complete").is_file() for c in ("checkpoint-8", "checkpoint-12"))
    half = target / "checkpoint-14"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"truncated")
    lines.clear()
    train(tmp_path, small_dataset, 16, lines)
    assert any("removing" in l and "checkpoint-14: it was not wholly saved" in l for l in lines)
    assert any("resuming from" in l and "checkpoint-12" in l for l in lines)
    assert [m["step"] for m in map(parse_metric_line, lines) if m and "loss" in m] == [14, 16]


def test_training_failure_fails_the_step(tmp_path, small_dataset):
    trainer = AlpacaloraFinetune(str(TINY_MODEL), str(tmp_path), launcher=launchers.local(), max_steps=2,
                                 **{**PARAMS, "lora_target_modules": "[wo,wqkv]"})
    with pytest.raises(launchers.LaunchError, match="none of lora_target_modules"):
        trainer(small_dataset.train_path)
    assert not Path(trainer.merge_path).exists()
