"""AutoFinetune: the framework and the batch layout it derives, for the cases of the contract's description."""

import importlib

import pytest

from tasks import launchers
from tasks.finetune import AlpacaloraFinetune, AutoFinetune, FlagembeddingFinetune, LlamafactoryFinetune, auto
from tasks.finetune.auto import model_size_b, plan_batches

auto_module = importlib.import_module("tasks.finetune.auto")  # tasks.finetune.auto is also the contract's factory

from tests.support.paths import TINY_MODEL


@pytest.fixture(autouse=True)
def gpu_memory(monkeypatch):
    monkeypatch.setenv("LAZYLLM_GPU_MEMORY", "80")


def test_7b_chat_model_on_one_80gb_gpu(tmp_path):
    trainer = AutoFinetune("internlm2-chat-7b", str(tmp_path), ctx_len=2048, batch_size=32, lora_r=8,
                           launcher=launchers.remote(ngpus=1))
    assert isinstance(trainer, LlamafactoryFinetune) and repr(trainer) == \
        "<fineflow.llm.finetune type=LlamafactoryFinetune>"
    plan = trainer.auto_plan
    assert (plan.framework, plan.model_type, plan.model_size_b, plan.ngpus) == ("llamafactory", "llm", 7.0, 1)
    # 7B in bf16 with LoRA overhead: 16.8 GB of 72 usable; 0.56 GB of activations a 2k-token sample -> 98 fit,
    # capped by the batch: 32 x 1.
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps) == (32, 1)
    p = trainer.params
    assert (p.per_device_train_batch_size, p.gradient_accumulation_steps, p.cutoff_len, p.lora_r) == (32, 1, 2048, 8)
    assert trainer.template == "intern2" and "first available of llamafactory, alpacalora" in plan.reason


def test_70b_model_spreads_its_weights_over_gpus(tmp_path):
    plan = AutoFinetune("Llama-3-70B-Instruct", str(tmp_path)).auto_plan
    # 168 GB of weights over GPUs of 72 usable GB: 3 GPUs, 16 GB free each; 2.8 GB a sample -> 4 x 3 (>= 32).
    assert (plan.ngpus, plan.micro_batch_size, plan.gradient_accumulation_steps) == (3, 4, 3)
    with pytest.raises(ValueError, match="70B model needs about 168 GB .*2 GPU\\(s\\) of 80 GB cannot hold it"):
        AutoFinetune("Llama-3-70B-Instruct", str(tmp_path), launcher=launchers.remote(ngpus=2))


def test_a_launcher_with_8_gpus_splits_the_batch(tmp_path):
    trainer = AutoFinetune("Qwen2.5-7B-Instruct", str(tmp_path), batch_size=64,
                           launcher=launchers.remote(ngpus=8))
    plan = trainer.auto_plan
    assert (plan.ngpus, plan.micro_batch_size, plan.gradient_accumulation_steps) == (8, 8, 1)  # 8 x 8 x 1 = 64
    assert trainer.launcher.ngpus == 8 and trainer.command_env()["NPROC_PER_NODE"] == "8"
    assert trainer.template == "qwen"


def test_models_that_cannot_be_finetuned_here_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="tts models cannot be finetuned"):
        AutoFinetune("ChatTTS", str(tmp_path))
    with pytest.raises(ValueError, match="sd models cannot be finetuned"):
        auto("stable-diffusion-3-medium", str(tmp_path))
    with pytest.raises(ValueError, match="cross_modal_embed models cannot be finetuned"):
        AutoFinetune("clip-vit-base", str(tmp_path))


def test_embedding_and_rerank_models_go_to_flagembedding(tmp_path):
    embed = AutoFinetune("bge-large-zh-v1.5", str(tmp_path), ctx_len=128, batch_size=16)
    assert isinstance(embed, FlagembeddingFinetune) and embed.model_type == "embed"
    assert embed.kw["query_max_len"] == embed.kw["passage_max_len"] == 128
    assert embed.kw["per_device_train_batch_size"] * embed.kw["gradient_accumulation_steps"] == 16
    rerank = AutoFinetune("bge-reranker-large", str(tmp_path))
    assert isinstance(rerank, FlagembeddingFinetune) and rerank.model_type == "rerank"
    assert rerank.kw["passage_max_len"] == 256 and "flagembedding" in rerank.auto_plan.reason


def test_the_first_available_framework_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(auto_module, "available", lambda name: name == "alpacalora")
    trainer = AutoFinetune(str(TINY_MODEL), str(tmp_path), ctx_len=256, batch_size=16, lora_r=4, learning_rate=1e-3)
    assert isinstance(trainer, AlpacaloraFinetune)
    assert "alpacalora, the first available of llamafactory, alpacalora, collie (llamafactory not available here)" \
        in trainer.auto_plan.reason
    assert (trainer.params.micro_batch_size, trainer.params.batch_size, trainer.params.cutoff_len,
            trainer.params.learning_rate) == (16, 16, 256, 1e-3)
    with pytest.raises(TypeError, match="'learning_rat': did you mean 'learning_rate'"):
        AutoFinetune(str(TINY_MODEL), str(tmp_path), learning_rat=1e-3)


def test_size_from_the_name_or_the_weights():
    assert model_size_b("Qwen2.5-0.5B-Instruct") == 0.5 and model_size_b("internlm2-chat-1_8b") == 1.8
    assert model_size_b("Yi-1.5-9B") == 9.0 and model_size_b("internlm2-chat-20b") == 20.0
    assert 0.0005 < model_size_b(str(TINY_MODEL)) < 0.002  # counted from the safetensors header
    assert plan_batches(0.001, 256, 16, 16, 80, 1) == (1, 16, 1)
