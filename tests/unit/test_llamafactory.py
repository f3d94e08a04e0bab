"""LlamafactoryFinetune without running LLaMA-Factory: the contract's parameters and YAMLs, and bad data caught
before training. Real runs: ``tests/component/test_llamafactory.py``."""

import json
from pathlib import Path

import pytest
import yaml

from tasks import envs, launchers
from tasks.data import DatasetError
from tasks.finetune import LlamafactoryFinetune, llamafactory
from tasks.finetune.llamafactory import FALLBACK_TEMPLATE, MODEL_TEMPLATE, template_for
from tasks.inference import CHAT_TEMPLATE
from tests.support.paths import TINY_MODEL


def test_contract_defaults_names_and_layout(tmp_path, chat_model):
    trainer = llamafactory("internlm2-chat-7b", str(tmp_path))
    assert (trainer.target_path, trainer.merge_path) == (f"{tmp_path}/lazyllm_lora", f"{tmp_path}/lazyllm_merge")
    p = trainer.params
    assert (p.stage, p.do_train, p.finetuning_type, p.lora_target, p.template) == ("sft", True, "lora", "all", None)
    assert (p.cutoff_len, p.max_samples, p.preprocessing_num_workers, p.dataset_dir) == (1024, 1000, 16,
                                                                                          "lazyllm_temp_dir")
    assert (p.logging_steps, p.save_steps, p.per_device_train_batch_size, p.gradient_accumulation_steps) == \
        (10, 500, 1, 8)
    assert (p.learning_rate, p.num_train_epochs, p.lr_scheduler_type, p.warmup_ratio, p.fp16) == \
        (1e-4, 3.0, "cosine", 0.1, True)
    assert (p.ddp_timeout, p.report_to, p.val_size, p.eval_strategy, p.eval_steps) == \
        (180000000, "tensorboard", 0.1, "steps", 500)
    assert p.overwrite_cache and p.plot_loss and p.overwrite_output_dir and p.per_device_eval_batch_size == 1
    # The template comes from the model name (longest prefix); for a name LLaMA-Factory has no template for, the
    # model's own chat template (None: LLaMA-Factory reads the tokenizer's), else `default` (the embedded model).
    assert trainer.template == "intern2" and template_for("Qwen2.5-0.5B-Instruct") == "qwen"
    assert template_for(str(TINY_MODEL)) == FALLBACK_TEMPLATE == "default"
    assert template_for(str(chat_model)) is MODEL_TEMPLATE is None
    assert LlamafactoryFinetune(str(TINY_MODEL), str(tmp_path), template="alpaca").template == "alpaca"
    assert trainer.prompt_style() == CHAT_TEMPLATE and trainer.formats() == ("alpaca", "sharegpt", "openai")
    with pytest.raises(TypeError, match=r"'lora_rnk': did you mean 'lora_r'\?"):
        LlamafactoryFinetune("m", str(tmp_path), lora_rnk=4)


def test_yamls_map_contract_names_and_apply_overlays_in_order(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("learning_rate: 3.0e-5\nnum_train_epochs: 9\nneftune_noise_alpha: 5\n")
    export_overlay = tmp_path / "export.yaml"
    export_overlay.write_text("export_size: 5\n")
    trainer = LlamafactoryFinetune(str(TINY_MODEL), str(tmp_path / "out"), config_path=str(overlay),
                                   export_config_path=str(export_overlay), lora_r=4,
                                   modules_to_save="[lm_head,embed_tokens]", lora_target_modules="[q_proj,v_proj]",
                                   micro_batch_size=2, gradient_step=3, num_train_epochs=2,
                                   launcher=launchers.remote(ngpus=2))
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]))
    command = trainer.cmd(str(data))
    cli = envs.bin_path("llamafactory", "llamafactory-cli")
    assert [a[:2] for a in command.argvs] == [[cli, "train"], [cli, "export"]]
    assert command.return_value == trainer.merge_path
    train = yaml.safe_load(Path(command.argvs[0][2]).read_text())
    # defaults < config_path overlay < the keyword arguments given
    assert train["learning_rate"] == 3.0e-5 and train["neftune_noise_alpha"] == 5 and train["num_train_epochs"] == 2
    assert (train["lora_rank"], train["additional_target"], train["lora_target"]) == (4, "lm_head,embed_tokens",
                                                                                       "q_proj,v_proj")
    assert (train["per_device_train_batch_size"], train["gradient_accumulation_steps"]) == (2, 3)
    assert (train["model_name_or_path"], train["output_dir"], train["template"]) == (str(TINY_MODEL),
                                                                                    trainer.target_path, "default")
    assert train["fp16"] is False  # no CUDA here: float32
    info = json.loads((Path(train["dataset_dir"]) / "dataset_info.json").read_text())
    assert train["dataset"] == "fineflow_train" and info["fineflow_train"]["columns"]["prompt"] == "instruction"
    assert json.loads((Path(train["dataset_dir"]) / "fineflow_train.json").read_text())[1]["output"] == "d"
    export = yaml.safe_load(Path(command.argvs[1][2]).read_text())
    assert (export["adapter_name_or_path"], export["export_dir"], export["export_size"]) == \
        (trainer.target_path, trainer.merge_path, 5)
    # Two processes: LLaMA-Factory launches torchrun itself, found on the environment's PATH.
    assert command.env["FORCE_TORCHRUN"] == "1" and command.env["NPROC_PER_NODE"] == "2"
    assert command.env["PATH"].startswith(str(Path(cli).parent))
    full = LlamafactoryFinetune(str(TINY_MODEL), str(tmp_path / "full"), finetuning_type="full")
    assert full.export_command().argvs[0][2:4] == ["tasks.finetune.merge", "copy"]


def test_bad_records_fail_before_training_naming_file_line_and_field(tmp_path):
    bad = tmp_path / "chat.jsonl"
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"conversations": [{"from": "human"}]}) + "\n")
    trainer = LlamafactoryFinetune(str(TINY_MODEL), str(tmp_path / "out"))
    with pytest.raises(DatasetError) as e:
        trainer.cmd(str(bad))
    assert (e.value.path, e.value.line) == (str(bad), 2) and "value" in e.value.field
    assert f"{bad}, line 2, field" in str(e.value)
    assert not (trainer.work_dir / "train.yaml").exists()  # nothing was written for a run
    alpaca = tmp_path / "a.jsonl"
    alpaca.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    dpo = LlamafactoryFinetune(str(TINY_MODEL), str(tmp_path / "dpo"), stage="dpo")
    with pytest.raises(DatasetError, match=r"a.jsonl, line 1: LLaMA-Factory stage 'dpo' trains on preference "
                                           r"records, not alpaca records"):
        dpo.cmd(str(alpaca))


