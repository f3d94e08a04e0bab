import pytest

from tasks.models import ModelManager, validate_model_path
from tasks.pipeline.config import load_config
from tasks.pipeline.config_files import ConfigError, deep_merge
from tasks.services.tracking import flatten
from tests.support.paths import REPO, TINY_MODEL


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "deployments").glob("*.yaml")))
def test_shipped_configs_validate(name):
    config = load_config(REPO / "deployments" / f"{name}.yaml")
    assert config.name == name and config.registry.alias == "production"


def test_every_shipped_config_has_a_prefect_deployment():
    import yaml

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    finetune = [d for d in spec if d["entrypoint"] == "flows/finetune.py:finetune"
                and d["work_pool"]["name"] == "fineflow-local"]
    deployments = {d["name"]: d["parameters"]["config_path"] for d in finetune}
    shipped = {p.stem: f"deployments/{p.name}" for p in (REPO / "deployments").glob("*.yaml")}
    assert deployments == shipped
    for d in finetune:  # a nightly schedule, off; a trigger on new data for its own pipeline, passing the file
        assert [(s["active"], bool(s["cron"])) for s in d["schedules"]] == [(False, True)]
        (trigger,) = d["triggers"]
        pipeline = load_config(d["parameters"]["config_path"]).name
        assert trigger["match"] == {"prefect.resource.id": f"fineflow.pipeline.{pipeline}"}
        assert trigger["expect"] == ["fineflow.dataset.updated"]
        assert trigger["parameters"] == {"config_path": d["parameters"]["config_path"],
                                         "data_path": "{{ event.payload.uri }}"}
    # Each has a twin on the Kubernetes pool: the same config, schedule and trigger, the image's checkout.
    twins = {d["name"]: d for d in spec if d["work_pool"]["name"] == "fineflow-k8s"}
    assert sorted(twins) == sorted(f"{d['name']}-k8s" for d in finetune)
    for d in finetune:
        twin = twins[f"{d['name']}-k8s"]
        assert (twin["entrypoint"], twin["parameters"], twin["schedules"], twin["triggers"]) == (
            d["entrypoint"], d["parameters"], d["schedules"], d["triggers"])
        assert twin["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/fineflow"}}]
    assert {n for n, d in twins.items() if d["work_pool"].get("job_variables", {}).get("gpu_limit")} == {
        f"{n}-k8s" for n in ("smollm2-arithmetic", "smollm2-arithmetic-llamafactory", "smollm2-gsm8k", "alpacalora",
                             "llamafactory", "llamafactory-dpo", "auto", "collie")}
    (watch,) = [d for d in spec if d["entrypoint"] == "flows/watch.py:watch"]
    assert [(s["active"], s["interval"]) for s in watch["schedules"]] == [(True, 60)]
    assert watch["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}  # no pile of watchers


def test_misspelled_or_mistyped_llamafactory_param_names_file_and_field(tmp_path):
    path = tmp_path / "lf.yaml"
    head = "name: x\ndata: {path: infra/datasets/d.json}\nregistry: {model_name: m}\n"
    path.write_text(head + "finetune: {framework: llamafactory, params: {lora_rnk: 4}}\n")
    with pytest.raises(ConfigError, match=r"lf.yaml: finetune.llamafactory.params: LlamafactoryFinetune got unknown "
                                          r"keyword argument\(s\) lora_rnk \('lora_rnk': did you mean 'lora_r'\?\)"):
        load_config(path)
    path.write_text(head + "finetune: {framework: llamafactory, params: {learning_rate: fast}}\n")
    with pytest.raises(ConfigError, match=r"lf.yaml: finetune.llamafactory.params.learning_rate: Input should be a "
                                          r"valid number"):
        load_config(path)
    path.write_text(head + "finetune: {framework: llamafactory, params: {stage: dop}}\n")
    with pytest.raises(ConfigError, match=r"finetune.llamafactory.params.stage: Input should be 'pt', 'sft'"):
        load_config(path)
    path.write_text(head + "finetune: {framework: lamafactory}\n")
    with pytest.raises(ConfigError, match=r"finetune: Input tag 'lamafactory' found using 'framework' does not match "
                                          r"any of the expected tags: 'alpacalora', 'llamafactory'"):
        load_config(path)
    # The contract's auto_map names are accepted and land on LLaMA-Factory's own.
    path.write_text(head + "finetune: {framework: llamafactory, params: {micro_batch_size: 4, gradient_step: 2}}\n")
    params = load_config(path).finetune.params
    assert (params.per_device_train_batch_size, params.gradient_accumulation_steps) == (4, 2)


def test_validating_a_config_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; from tasks.pipeline.config import load_config; load_config('deployments/llamafactory.yaml'); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_config_errors_name_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: {path: infra/datasets/d.json, val_set_size: 0}\nregistry: {model_name: m}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: data.val_set_size: Input should be greater than or equal to 1"):
        load_config(path)
    path.write_text("name: x\ndata: {path: infra/datasets/d.json}\nregistry: {model_name: m}\nfinetune: {params: {lora_rank: 4}}\n")
    with pytest.raises(ConfigError, match=r"finetune.alpacalora.params: AlpacaloraFinetune got unknown keyword "
                                          r"argument\(s\) lora_rank \('lora_rank': did you mean 'lora_r'\?\); "
                                          r"allowed: .*lora_r"):
        load_config(path)
    path.write_text("name: x\ndata: {path: infra/datasets/d.json, prompt_template_name: alpacca}\nregistry: {model_name: m}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: data.prompt_template_name: .*unknown prompt template "
                                          r"'alpacca'; known: alpaca"):
        load_config(path)
    path.write_text("name: x\ndata: {path: infra/datasets/d.json, prompt_template_name: chat}\nregistry: {model_name: m}\n")
    with pytest.raises(ConfigError, match=r"unknown prompt template 'chat'; known: .*; or chat_template"):
        load_config(path)
    path.write_text("name: x\ndata: {path: infra/datasets/d.json, prompt_template_name: chat_template}\n"
                    "registry: {model_name: m}\nevaluate: {answer: number}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: evaluate.answer: .*unknown answer kind 'number'; known: exact, "
                                          r"final_number, text"):
        load_config(path)
    path.write_text("name: x\ndata: {path: infra/datasets/d.json}\nregistry: {model_name: m}\n"
                    "deploy: {formatter: json, formatter_selector: '[a, 1:2]'}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: deploy.relay: .*mixes a slice and a list"):
        load_config(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_merge_deeply():
    config = load_config(REPO / "deployments" / "quickstart.yaml", {"finetune": {"params": {"max_steps": 7}}})
    assert config.finetune.params.max_steps == 7 and config.finetune.params.lora_r == 16


def test_model_manager_finds_the_embedded_base_and_rejects_bad_names(tmp_path):
    manager = ModelManager(model_path="", cache_dir=str(tmp_path))
    assert manager.download("tiny-llama") == str(TINY_MODEL)
    assert validate_model_path(TINY_MODEL) and not validate_model_path(tmp_path)
    assert manager.find_local("no-such-model") is None
    with pytest.raises(ValueError, match="invalid model name"):
        manager.download("../etc")


def test_params_are_flattened_with_dotted_names():
    assert flatten({"a": {"b": 1}, "c": [1]}) == {"a.b": "1", "c": "[1]"}


def test_backend_tables_are_in_sync_with_their_modules_and_environments():
    from tasks import envs
    from tasks.deploy import ENGINES
    from tasks.finetune import FRAMEWORKS

    for table, key in ((FRAMEWORKS, "framework"), (ENGINES, "engine")):
        for name, cls in table.items():
            assert getattr(cls, key) == name and cls.Params is not None
            if cls.environment is not None:  # its own environment: a pinned requirements file exists
                assert envs.spec_path(cls.environment).is_file()


def test_paths_errors_and_merging_in_detail(tmp_path, monkeypatch):
    head = "name: x\nregistry: {model_name: m}\n"
    path = tmp_path / "p.yaml"
    path.write_text(head + "data: {path: infra/datasets/word_ops.json}\n")
    assert load_config(path).data.path == str(REPO / "infra/datasets/word_ops.json")  # relative: from the repo
    path.write_text(head + f"data: {{path: {tmp_path / 'd.json'}}}\n")
    assert load_config(path).data.path == str(tmp_path / "d.json")
    path.write_text(head + "data: {path: 's3://bucket/d.json'}\n")
    assert load_config(path).data.path == "s3://bucket/d.json"
    # A relative config path is found from the working directory, else from the repository.
    monkeypatch.chdir(tmp_path)
    assert load_config("p.yaml").name == "x"
    assert load_config("deployments/quickstart.yaml").name == "quickstart"
    with pytest.raises(ConfigError, match=f"^{REPO / 'deployments/nope.yaml'}: file not found$"):
        load_config("deployments/nope.yaml")
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=f"^{path}: not valid YAML: "):
        load_config(path)
    path.write_text("")  # an empty file is an empty mapping: every missing section is named, joined by "; "
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: name: Field required; data: Field required; registry: Field required"
    path.write_text(head + "data: {path: infra/datasets/d.json}\nfinetune: {framework: alpacalora}\nsurprise: 1\n")
    with pytest.raises(ConfigError, match=r"surprise: Extra inputs are not permitted"):
        load_config(path)
    # Overrides merge into nested mappings; a value that is not a mapping replaces what was there.
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 3}, "e": 4}) == \
        {"a": {"b": 3, "c": 2}, "d": 1, "e": 4}
    assert deep_merge({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}
    assert deep_merge({"a": {"b": 2}}, {"a": 5}) == {"a": 5}


def test_a_config_without_backends_gets_the_defaults(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nregistry: {model_name: m}\ndata: {path: infra/datasets/d.json}\n")
    config = load_config(path)
    assert (config.finetune.framework, config.deploy.backend) == ("alpacalora", "relay")
    path.write_text("name: x\nregistry: {model_name: m}\ndata: {path: infra/datasets/d.json}\nfinetune: {nproc: 2}\n"
                    "deploy: {port: 8123}\n")
    config = load_config(path)
    assert (config.finetune.framework, config.finetune.nproc, config.deploy.backend, config.deploy.port) == \
        ("alpacalora", 2, "relay", 8123)


def test_the_demo_runs_any_deployment_by_name_and_names_the_known_ones():
    from infra.demo import resolve

    assert resolve("quickstart") == "finetune/quickstart" and resolve("ocr") == "deploy/ocr"
    assert resolve("deploy/tts") == "deploy/tts" and resolve("data") == "watch/data"
    with pytest.raises(SystemExit, match=r"no deployment 'ocrr' in prefect.yaml; known: .*deploy/ocr"):
        resolve("ocrr")


SELF_DEFEATING = [  # (what follows a valid head, what the error says)
    ("evaluate: {gate: {min_improvement: -1.0e9}}\n", r"bad.yaml: evaluate.gate: min_improvement -1000000000.0 lets "
                                                      r"a candidate worse than the base through; set allow_regression"),
    ("evaluate: {gate: {min_improvement: .nan}}\n", r"evaluate.gate.min_improvement: Input should be a finite number"),
    # the second registry silently wins in plain YAML
    ("registry: {model_name: other}\n", r"bad.yaml: not valid YAML: .*key 'registry' is given twice, on lines 3 and 4"),
    ("model: {base_model: /etc}\n", r"model.base_model: /etc is a folder here but not a model"),
    ("# " + "x" * 2_000_000 + "\n", r"bad.yaml: 2,000,\d+ bytes; a pipeline config is at most 1,000,000"),
]


@pytest.mark.parametrize("tail, message", SELF_DEFEATING)
def test_config_that_would_defeat_itself_is_refused_naming_file_and_field(tmp_path, tail, message):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: {path: infra/datasets/word_ops.json}\nregistry: {model_name: m}\n" + tail)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_gate_may_allow_a_regression_only_when_it_says_so(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("name: x\ndata: {path: infra/datasets/word_ops.json}\nregistry: {model_name: m}\n"
                    "evaluate: {gate: {min_improvement: -0.01, allow_regression: true}}\n")
    assert load_config(path).evaluate.gate.min_improvement == -0.01
