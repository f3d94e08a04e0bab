import pytest

from tasks.config import ConfigError, load_config
from tasks.models import ModelManager, validate_model_path
from tasks.tracking import REDACTED, flatten, redact

from conftest import REPO, TINY_MODEL


@pytest.mark.parametrize("name", ["quickstart", "alpacalora"])
def test_shipped_configs_validate(name):
    config = load_config(REPO / "deployments" / f"{name}.yaml")
    assert config.name == name and config.registry.alias == "production"


def test_config_errors_name_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: {path: d.json, val_set_size: 0}\nregistry: {model_name: m}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: data.val_set_size: Input should be greater than or equal to 1"):
        load_config(path)
    path.write_text("name: x\ndata: {path: d.json}\nregistry: {model_name: m}\nfinetune: {params: {lora_rank: 4}}\n")
    with pytest.raises(ConfigError, match=r"finetune.params: .*lora_rank.*allowed: .*lora_r"):
        load_config(path)
    path.write_text("name: x\ndata: {path: d.json, prompt_template_name: alpacca}\nregistry: {model_name: m}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: data.prompt_template_name: .*unknown prompt template "
                                          r"'alpacca'; known: alpaca"):
        load_config(path)
    path.write_text("name: x\ndata: {path: d.json}\nregistry: {model_name: m}\n"
                    "deploy: {formatter: json, formatter_selector: '[a, 1:2]'}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: deploy: .*mixes a slice and a list"):
        load_config(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_merge_deeply():
    config = load_config(REPO / "deployments" / "quickstart.yaml", {"finetune": {"params": {"max_steps": 7}}})
    assert config.finetune.params["max_steps"] == 7 and config.finetune.params["lora_r"] == 16


def test_model_manager_finds_the_embedded_base_and_rejects_bad_names(tmp_path):
    manager = ModelManager(model_path="", cache_dir=str(tmp_path))
    assert manager.download("tiny-llama") == str(TINY_MODEL)
    assert validate_model_path(TINY_MODEL) and not validate_model_path(tmp_path)
    assert manager.find_local("no-such-model") is None
    with pytest.raises(ValueError, match="invalid model name"):
        manager.download("../etc")


def test_secrets_are_redacted_from_params():
    params = redact({"s3": {"secret_key": "abc", "endpoint": "http://x"}, "hf_token": "t", "api_key": None})
    assert params == {"s3": {"secret_key": REDACTED, "endpoint": "http://x"}, "hf_token": REDACTED, "api_key": None}
    assert flatten({"a": {"b": 1}, "c": [1]}) == {"a.b": "1", "c": "[1]"}
