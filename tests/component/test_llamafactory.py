"""Real LLaMA-Factory runs on the embedded tiny model in its own environment: SFT + export, a failure forced by a
config overlay, ZeRO-2 on 2 CPU processes, and the train YAML read back by LLaMA-Factory's own parser."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tasks import envs, launchers
from tasks.data import read_jsonl
from tasks.finetune import LlamafactoryFinetune
from tasks.finetune.merge import weight_delta
from tasks.inference import CHAT_TEMPLATE, generate, load_model, render_prompts
from tests.support.paths import REPO, TINY_MODEL

PARSE_BACK = """
import json, sys, yaml
from llamafactory.hparams import get_train_args
model, data, training, finetuning, _ = get_train_args(yaml.safe_load(open(sys.argv[1])))
print(json.dumps({
    "lora_rank": finetuning.lora_rank, "lora_alpha": finetuning.lora_alpha, "lora_dropout": finetuning.lora_dropout,
    "lora_target": finetuning.lora_target, "additional_target": finetuning.additional_target,
    "stage": finetuning.stage, "finetuning_type": finetuning.finetuning_type,
    "learning_rate": training.learning_rate, "num_train_epochs": training.num_train_epochs,
    "per_device_train_batch_size": training.per_device_train_batch_size,
    "gradient_accumulation_steps": training.gradient_accumulation_steps,
    "lr_scheduler_type": str(training.lr_scheduler_type.value), "warmup_ratio": training.warmup_ratio,
    "logging_steps": training.logging_steps, "save_steps": training.save_steps, "max_steps": training.max_steps,
    "seed": training.seed, "output_dir": training.output_dir, "cutoff_len": data.cutoff_len,
    "max_samples": data.max_samples, "template": data.template, "model_name_or_path": model.model_name_or_path,
}))
"""


FAST = dict(per_device_train_batch_size=8, gradient_accumulation_steps=1, learning_rate=2e-3, lora_r=8,
            cutoff_len=128, logging_steps=2, save_steps=4, eval_steps=4, per_device_eval_batch_size=8,
            preprocessing_num_workers=1, report_to="none", warmup_ratio=0.0)


def run_training(trainer, data, tmp_path):
    metrics: list[dict] = []
    trainset, valset = trainer.prepare_data(data.train_path, data.val_path, data.format, tmp_path / "lf-data")
    envs.ensure(trainer.environment)
    with launchers.follow(trainer.metrics_file(), lambda line: metrics.append(trainer.parse_metrics(line))):
        trainer.launcher.launch(trainer.train_command(trainset, valset), name="train")
    return [m for m in metrics if m]


def test_lora_sft_trains_and_exports_a_model_with_its_chat_template(tmp_path, small_dataset):
    log = tmp_path / "train.log"
    trainer = LlamafactoryFinetune(str(TINY_MODEL), str(tmp_path), max_steps=8,
                                   launcher=launchers.local(log_path=log), **FAST)
    metrics = run_training(trainer, small_dataset, tmp_path)
    assert [m["step"] for m in metrics if "loss" in m] == [2, 4, 6, 8]
    assert any("eval_loss" in m for m in metrics) and all(m.get("loss", 1) > 0 for m in metrics)
    assert any(m.get("tokens_per_second", 0) > 0 for m in metrics)
    trainer.launcher.launch(trainer.export_command(), name="export")
    merged = Path(trainer.merge_path)
    assert (merged / "model.safetensors").exists() and weight_delta(str(TINY_MODEL), str(merged)) > 0
    # The export carries LLaMA-Factory's template as the tokenizer's chat template: serving and evaluation render
    # prompts exactly as training did.
    prompt = render_prompts(CHAT_TEMPLATE, [{"instruction": "Write the word twice.", "input": "fox"}], str(merged))[0]
    assert prompt == "Human: Write the word twice.\nfox</s>\nAssistant:"
    model, tokenizer = load_model(str(merged))
    assert isinstance(generate(model, tokenizer, [prompt], CHAT_TEMPLATE, max_new_tokens=4)[0], str)


def test_failure_from_a_config_overlay_fails_and_never_exports(tmp_path, small_dataset):
    overlay = tmp_path / "broken.yaml"
    overlay.write_text("lora_target: no_such_module\n")
    trainer = LlamafactoryFinetune(str(TINY_MODEL), str(tmp_path), config_path=str(overlay), max_steps=2,
                                   launcher=launchers.local(), **{k: v for k, v in FAST.items() if k != "lora_target"})
    data = small_dataset
    with pytest.raises(launchers.LaunchError, match=r"exit code [1-9](.|\n)*no_such_module"):
        trainer(data.source)  # the contract's call: train, then export only if training succeeded
    assert not (Path(trainer.merge_path) / "model.safetensors").exists()


def test_deepspeed_zero2_on_two_cpu_processes(tmp_path, small_dataset):
    log = tmp_path / "train.log"
    trainer = LlamafactoryFinetune(str(TINY_MODEL), str(tmp_path), max_steps=4,
                                   deepspeed=str(REPO / "infra" / "deepspeed" / "zero2.json"),
                                   launcher=launchers.remote(ngpus=2, log_path=log), **FAST)
    metrics = run_training(trainer, small_dataset, tmp_path)
    text = log.read_text()
    assert "world size: 2" in text and "distributed training: True" in text
    checkpoint = Path(trainer.target_path) / "checkpoint-4"
    assert list(checkpoint.glob("global_step*"))  # a DeepSpeed engine checkpoint, one optimizer shard per rank
    assert len(list(checkpoint.glob("global_step*/*optim_states.pt"))) == 2
    assert [m["step"] for m in metrics if "loss" in m] == [2, 4]
    trainer.launcher.launch(trainer.export_command(), name="export")
    assert weight_delta(str(TINY_MODEL), trainer.merge_path) > 0
    assert read_jsonl(Path(trainer.target_path) / "trainer_log.jsonl")[-1]["current_steps"] == 4


def test_train_yaml_reads_back_as_the_components_parameters(tmp_path):
    """LLaMA-Factory's own argument parser, in its environment, reads the YAML the component wrote: every value
    set here, away from LLaMA-Factory's and the contract's defaults, arrives as given."""
    chosen = dict(lora_r=6, lora_alpha=14, lora_dropout=0.125, lora_target_modules="[q_proj,k_proj]",
                  modules_to_save="[lm_head]", learning_rate=1.25e-3, num_train_epochs=1.5, micro_batch_size=3,
                  gradient_step=5, lr_scheduler_type="linear", warmup_ratio=0.25, logging_steps=3, save_steps=7,
                  max_steps=13, cutoff_len=77, max_samples=55, template="alpaca")
    trainer = LlamafactoryFinetune(str(TINY_MODEL), str(tmp_path / "out"), **chosen)
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]))
    config = trainer.train_command(str(data)).argvs[0][2]
    proc = subprocess.run([envs.bin_path("llamafactory", "python"), "-c", PARSE_BACK, config], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **trainer.command_env()})
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert parsed == {"lora_rank": 6, "lora_alpha": 14, "lora_dropout": 0.125, "lora_target": ["q_proj", "k_proj"],
                      "additional_target": ["lm_head"], "stage": "sft", "finetuning_type": "lora",
                      "learning_rate": 1.25e-3, "num_train_epochs": 1.5, "per_device_train_batch_size": 3,
                      "gradient_accumulation_steps": 5, "lr_scheduler_type": "linear", "warmup_ratio": 0.25,
                      "logging_steps": 3, "save_steps": 7, "max_steps": 13, "seed": 42,
                      "output_dir": trainer.target_path, "cutoff_len": 77, "max_samples": 55, "template": "alpaca",
                      "model_name_or_path": str(TINY_MODEL)}
