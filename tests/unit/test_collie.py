"""CollieFinetune: the contract's defaults, the exact command (read back by the training script's own parser),
and the preflight that refuses at once on a machine without CUDA GPUs and NCCL, as these machines are."""


import pytest

from tasks import envs, launchers
from tasks.finetune import CollieFinetune, collie
from tasks.finetune.collie import SCRIPT, CollieUnavailableError, cuda_with_nccl
from tasks.finetune.collie_train import parse_args
from tests.support.paths import TINY_MODEL


def test_contract_defaults_and_auto_map(tmp_path):
    trainer = collie("path/to/base/model", str(tmp_path))
    assert (trainer.target_path, trainer.merge_path) == (f"{tmp_path}/lazyllm_lora", f"{tmp_path}/lazyllm_merge")
    assert (trainer.model_name, trainer.cp_files) == ("LLM", "tokeniz*")
    p = trainer.params
    assert (p.batch_size, p.micro_batch_size, p.num_epochs, p.learning_rate) == (64, 4, 3, 5e-4)
    assert (p.dp_size, p.pp_size, p.tp_size, p.lora_r, p.lora_alpha, p.lora_dropout) == (8, 1, 1, 8, 16, 0.05)
    assert (p.lora_target_modules, p.modules_to_save, p.prompt_template_name, p.data_path) == \
        ("[wo,wqkv]", "[tok_embeddings,output]", "alpaca", None)
    mapped = CollieFinetune("m", str(tmp_path), ddp=2, tp=2, micro_batch_size=8).params
    assert (mapped.dp_size, mapped.tp_size, mapped.micro_batch_size) == (2, 2, 8)
    with pytest.raises(TypeError, match="'lora_alfa': did you mean 'lora_alpha'"):
        CollieFinetune("m", str(tmp_path), lora_alfa=3)


def test_the_command_is_exact_and_the_script_reads_it_back(tmp_path):
    trainer = CollieFinetune(str(TINY_MODEL), str(tmp_path), dp_size=2, tp_size=2, lora_r=16, learning_rate=1e-3,
                             lora_target_modules="[q_proj,v_proj]", modules_to_save="[]")
    command = trainer.cmd("train.jsonl")
    train, merge, copy = command.argvs
    assert train[:3] == [envs.bin_path("collie", "torchrun"), "--nproc_per_node=4", str(SCRIPT)]  # dp x tp x pp
    args = parse_args(train[3:])
    assert (args.base_model, args.data_path, args.output_dir) == (str(TINY_MODEL), "train.jsonl", trainer.target_path)
    for field in ("batch_size", "micro_batch_size", "num_epochs", "learning_rate", "dp_size", "pp_size", "tp_size",
                  "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "modules_to_save", "seed"):
        assert getattr(args, field) == getattr(trainer.params, field), field
    assert merge[2:4] == ["tasks.finetune.merge", "merge"] and "--merge_path" in merge and copy[-1] == "tokeniz*"
    assert command.return_value == trainer.merge_path
    assert command.env["PATH"].startswith(str(envs.env_dir("collie") / "bin"))


def test_preflight_refuses_at_once_without_cuda_and_nccl(tmp_path):
    ok, found = cuda_with_nccl()
    assert not ok and "no CUDA device" in found  # the machines this runs on
    trainer = CollieFinetune(str(TINY_MODEL), str(tmp_path), dp_size=1, launcher=launchers.local())
    with pytest.raises(CollieUnavailableError, match=r"^CollieFinetune needs CUDA GPUs with NCCL \(CoLLiE's "
                                                     r"setup_distribution .*\); this machine has no CUDA device"):
        trainer("train.jsonl")
    assert not (tmp_path / "lazyllm_lora").exists()  # nothing ran


