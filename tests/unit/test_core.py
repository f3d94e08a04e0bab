import pytest

from tasks import launchers
from tasks.core import Command, ComponentBase, LazyLLMCMD, UnknownKwargsError, check_kwargs
from tasks.deploy import DummyDeploy, LazyLLMDeployBase
from tasks.finetune import AlpacaloraFinetune, DummyFinetune, alpacalora
from tasks.finetune.base import parse_module_list


def test_check_kwargs_names_the_allowed_keys():
    with pytest.raises(UnknownKwargsError) as e:
        check_kwargs("Thing", {"lora_rank": 8}, ["lora_r", "lora_alpha"])
    assert "lora_rank" in str(e.value) and "allowed: lora_alpha, lora_r" in str(e.value)


def test_unknown_finetune_kwarg_lists_allowed_ones():
    with pytest.raises(UnknownKwargsError) as e:
        AlpacaloraFinetune("base", "target", learning_rat=1e-3)
    message = str(e.value)
    assert "learning_rat" in message and "learning_rate" in message and "micro_batch_size" in message


def test_component_apply_and_name():
    class Double(ComponentBase):
        def apply(self, x):
            return x * 2

    comp = Double()
    comp.name = "ExampleComponent"
    assert comp.name == "ExampleComponent"
    assert comp(10) == 20 and comp.apply(5) == 10


def test_component_cmd_runs_through_launcher(tmp_path):
    out = tmp_path / "hello.txt"

    class Touch(ComponentBase):
        def cmd(self, path):
            return Command(["touch", str(path)], return_value=str(path))

    assert Touch(launcher=launchers.local())(out) == str(out)
    assert out.exists()


def test_failed_command_raises_with_output_tail(tmp_path):
    launcher = launchers.local(log_path=tmp_path / "log.txt")
    with pytest.raises(launchers.LaunchError) as e:
        launcher.run(["python3", "-c", "print('about to' + ' fail'); raise SystemExit(3)"], name="boom")
    command, _, tail = str(e.value).partition("--- last output ---")
    assert "exit code 3" in command and "about to fail" not in command and "about to fail" in tail
    assert "about to fail" in (tmp_path / "log.txt").read_text()


def test_dummy_finetune_matches_reference():
    finetuner = DummyFinetune(base_model="example-base", target_path="example-target",
                              launcher=launchers.local(), custom_arg="value")
    assert finetuner.cmd() == "echo 'dummy finetune!, and init-args is {'custom_arg': 'value'}'"
    assert finetuner("--example-arg") == "example-target"


def test_alpacalora_defaults_and_layout():
    trainer = alpacalora("path/to/base/model", "path/to/target")
    assert trainer.target_path == "path/to/target/lazyllm_lora"
    assert trainer.merge_path == "path/to/target/lazyllm_merge"
    assert trainer.cp_files == "tokeniz*" and trainer.model_name == "LLM"
    kw = trainer.kw
    assert (kw["batch_size"], kw["micro_batch_size"], kw["num_epochs"], kw["learning_rate"]) == (64, 4, 2, 5e-4)
    assert (kw["cutoff_len"], kw["val_set_size"], kw["lora_r"], kw["lora_alpha"]) == (1030, 200, 8, 32)
    assert kw["lora_target_modules"] == "[wo,wqkv]" and kw["prompt_template_name"] == "alpaca"
    assert 19000 <= kw["nccl_port"] < 20500
    command = trainer.cmd("my_dataset.json")
    assert [argv[2] for argv in command.argvs] == ["tasks.finetune.train_lora", "tasks.finetune.merge", "tasks.finetune.merge"]
    assert command.return_value == "path/to/target/lazyllm_merge"


def test_alpacalora_with_merge_path_keeps_target():
    trainer = AlpacaloraFinetune("base", "lora_out", merge_path="merged")
    assert (trainer.target_path, trainer.merge_path) == ("lora_out", "merged")


def test_parse_module_list():
    assert parse_module_list("[wo,wqkv]") == ["wo", "wqkv"]
    assert parse_module_list("q_proj, v_proj") == ["q_proj", "v_proj"]
    assert parse_module_list("[]") == []


def test_dummy_deploy_replies_whole_or_streamed():
    deployer = DummyDeploy()
    assert deployer.launcher.sync is False  # launchers.remote(sync=False), as documented
    assert deployer({"inputs": "hi", "parameters": {"temperature": 0.5}}) == \
        "reply for hi, and parameters is {'temperature': 0.5}"
    # A bare input fills message_format, whose parameters are the defaults.
    assert deployer("hello") == "reply for hello, and parameters is {'do_sample': False, 'temperature': 0.1}"
    assert DummyDeploy.message_format["inputs"] == ""  # the class template is never mutated
    pieces = list(DummyDeploy(stream=True)("hello"))
    assert len(pieces) == 7 and "".join(pieces) == deployer("hello")
    with pytest.raises(UnknownKwargsError, match="allowed: port"):
        DummyDeploy(prot=1)


def test_extract_result_defaults_to_the_raw_output_and_is_overridable():
    assert LazyLLMDeployBase.extract_result("raw", {"q": 1}) == "raw"

    class MyDeployer(LazyLLMDeployBase):
        @staticmethod
        def extract_result(output, inputs):
            return output["result"]

    assert MyDeployer().extract_result({"result": 42}, None) == 42


def test_command_object_holds_argvs_return_value_and_check():
    command = LazyLLMCMD([["train", "--token", "s3cret"], ["merge"]], return_value="/out", checker=lambda: True)
    assert LazyLLMCMD is Command
    assert command.argvs == [["train", "--token", "s3cret"], ["merge"]]
    assert command.return_value == "/out" and command.checker()
    assert str(command) == "train --token '******' && merge"
