"""Bounded inputs: every value a person types is typed and ranged before anything runs; data paths stay under the
data roots; records have a size bound; preparing streams; child processes get no credentials."""

import json
import sys
import typing

import pytest

from tasks import bounds, launchers
from tasks.data import DatasetError, prepare
from tasks.pipeline.config import ConfigError, load_config
from tests.support.paths import REPO, TINY_MODEL


def numeric_fields():
    from tasks.deploy import ENGINES
    from tasks.finetune import FRAMEWORKS

    for table in (FRAMEWORKS, ENGINES):
        for cls in table.values():
            for name, field in cls.Params.model_fields.items():
                kinds = typing.get_args(field.annotation) or (field.annotation,)
                if {int, float} & set(kinds):  # a number, or a number or None
                    yield cls.Params.__name__, name


def test_every_numeric_backend_parameter_has_a_range_and_every_range_a_parameter():
    fields = list(numeric_fields())
    assert [f"{owner}.{name}" for owner, name in fields if name not in bounds.BOUNDS] == []
    assert set(bounds.BOUNDS) - {name for _, name in fields} == set()


@pytest.mark.parametrize("override, message", [
    ({"finetune": {"params": {"learning_rate": "fast"}}}, "finetune.alpacalora.params.learning_rate: Input should be "
                                                          "a valid number"),
    ({"finetune": {"params": {"learning_rate": 0}}}, r"learning_rate=0.0 is out of range \(0 < learning_rate <= 1\)"),
    ({"finetune": {"params": {"lora_r": -4}}}, r"finetune.alpacalora.params: AlpacaloraFinetune: lora_r=-4 is out "
                                               r"of range \(1 <= lora_r <= 1024\)"),
    ({"finetune": {"params": {"batch_size": 0}}}, r"batch_size=0 is out of range"),
    ({"finetune": {"params": {"lora_dropout": 2.0}}}, r"lora_dropout=2.0 is out of range \(0 <= lora_dropout <= 0.99\)"),
    ({"finetune": {"params": {"max_steps": 10**12}}}, r"max_steps=1000000000000 is out of range \(1 <= max_steps <= "
                                                      r"1e\+07 or -1\)"),
    ({"finetune": {"nproc": 0}}, "finetune.alpacalora.nproc: Input should be greater than or equal to 1"),
    ({"evaluate": {"gate": {"metric": "bogus"}}}, "evaluate.gate.metric 'bogus' is not measured for llm models; "
                                                  "measured: exact_match, val_loss, perplexity"),
    ({"evaluate": {"max_samples": 0}}, "evaluate.max_samples: Input should be greater than or equal to 1"),
    ({"deploy": {"port": -1}}, "deploy.relay.port: Input should be greater than or equal to 0"),
    ({"deploy": {"port": 70000}}, "deploy.relay.port: Input should be less than or equal to 65535"),
    ({"deploy": {"params": {"max_batch": 0}}}, "deploy.relay.params.max_batch: Input should be greater than or "
                                                "equal to 1"),
    ({"deploy": {"params": {"ready_timeout_s": 0}}}, r"ready_timeout_s=0.0 is out of range \(0 < ready_timeout_s "
                                                     r"<= 86400\)"),
    ({"registry": {"model_name": ""}}, "registry.model_name: String should match pattern"),
    ({"registry": {"model_name": "a/../b"}}, "registry.model_name: String should match pattern"),
    ({"name": "x y"}, "name: String should match pattern"),
    ({"data": {"val_set_size": 0}}, "data.val_set_size: Input should be greater than or equal to 1"),
    ({"data": {"max_record_chars": 0}}, "data.max_record_chars: Input should be greater than or equal to 100"),
], ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else None)
def test_bad_values_fail_naming_file_and_field(override, message):
    with pytest.raises(ConfigError, match=rf"^deployments/quickstart.yaml: .*{message}") as e:
        load_config("deployments/quickstart.yaml", override)
    assert "Traceback" not in str(e.value)


def test_the_gate_metric_is_checked_against_the_model_type():
    assert load_config("deployments/flagembedding.yaml", {"evaluate": {"gate": {"metric": "recall_at_1"}}})
    with pytest.raises(ConfigError, match="'recall_at_1' is not measured for rerank models; measured: mrr_at_10, "
                                          "ndcg_at_10"):
        load_config("deployments/flagembedding-rerank.yaml", {"evaluate": {"gate": {"metric": "recall_at_1"}}})


def test_a_config_that_is_not_a_mapping_names_the_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- name: x\n- data: y\n")
    with pytest.raises(ConfigError, match=rf"^{path}: the top level must be a mapping of sections .*not a list$"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^deployments/quickstart.yaml: overrides must be a mapping .*not a list"):
        load_config("deployments/quickstart.yaml", [{"name": "x"}])


def test_data_paths_stay_under_the_data_roots(tmp_path, monkeypatch):
    from tasks.settings import state_dir

    def data_path(path):
        return load_config("deployments/quickstart.yaml", {"data": {"path": str(path)}}).data.path

    assert data_path("infra/datasets/word_ops.json") == str(REPO / "infra/datasets/word_ops.json")
    assert data_path("s3://bucket/in/d.jsonl") == "s3://bucket/in/d.jsonl"
    for bad in ("../../etc/passwd", "/etc/passwd", "infra/datasets/../../.fineflow/s3-credentials.json",
                str(state_dir() / "s3-credentials.json")):
        with pytest.raises(ConfigError, match=r"data.path: .* resolves to .*, outside the data roots"):
            data_path(bad)
    with pytest.raises(ConfigError, match="may not hold '..' segments"):
        data_path("s3://bucket/in/../../other/d.jsonl")
    with pytest.raises(ConfigError, match="a local file or an s3:// URI"):
        data_path("http://example.com/d.jsonl")
    # A link inside a root that points out of it is followed, then refused.
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.json").symlink_to("/etc/passwd")
    monkeypatch.setenv("FINEFLOW_DATA_ROOTS", str(root))
    with pytest.raises(ConfigError, match=r"resolves to /etc/passwd, outside the data roots"):
        data_path(root / "link.json")
    (root / "d.json").write_text("[]")
    assert data_path(root / "d.json") == str(root / "d.json")
    monkeypatch.delenv("FINEFLOW_DATA_ROOTS")
    monkeypatch.setenv("LAZYLLM_DATA_PATH", str(root))  # the contract's data root counts too
    assert data_path(root / "d.json") == str(root / "d.json")


def test_a_record_over_the_size_bound_is_refused_naming_line_and_field(tmp_path):
    rows = [{"instruction": f"q{i}", "output": "a"} for i in range(10)]
    rows[6] = {"instruction": "q", "input": "x" * 100_000, "output": "a"}
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError, match=rf"^{path}, line 7, field 'input': the record holds 100002 characters, "
                                           r"more than data.max_record_chars=20000"):
        prepare(path, tmp_path / "work", val_set_size=2)
    assert not (tmp_path / "work").exists()
    prepared = prepare(path, tmp_path / "work", val_set_size=2, max_record_chars=200_000)  # the bound is a setting
    assert prepared.n_train + prepared.n_val == 10


def test_evaluation_reads_only_the_end_of_a_prompt_longer_than_the_context():
    import torch

    from tasks import inference

    model, tokenizer = inference.load_model(str(TINY_MODEL))
    assert inference.context_len(model) == 256
    long_prompt = "reverse: " + " ".join(f"w{i}" for i in range(3000))
    ids = tokenizer(long_prompt, add_special_tokens=False).input_ids
    assert len(ids) > 2000
    keep = ids[-(256 - 8):]  # the context less max_new_tokens; the BOS in front is cut with the head
    with torch.inference_mode():
        out = model.generate(torch.tensor([keep]), attention_mask=torch.ones(1, len(keep), dtype=torch.long),
                             max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(out[0, len(keep):], skip_special_tokens=True)
    assert inference.generate(model, tokenizer, [long_prompt], "alpaca", max_new_tokens=8) == [expected]
    loss = inference.response_loss(model, tokenizer, "alpaca", [long_prompt], ["w1"])
    assert 0 < loss < 50


def test_child_processes_get_no_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3-secret-value-123")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "s3-access-id-456")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "tracking-pw-789")
    monkeypatch.setenv("FINEFLOW_PROBE", "kept")
    out = tmp_path / "env.json"
    script = f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    launchers.local().run([sys.executable, "-c", script], extra_env={"ENGINE_API_KEY": "passed-on-purpose"})
    seen = json.loads(out.read_text())
    assert seen["FINEFLOW_PROBE"] == "kept" and seen["ENGINE_API_KEY"] == "passed-on-purpose"
    assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD"} & set(seen)


def test_files_a_framework_reads_stay_under_the_data_roots():
    zero2 = {"finetune": {"params": {"deepspeed": "infra/deepspeed/zero2.json"}}}
    ok = load_config("deployments/quickstart.yaml", zero2)
    assert ok.finetune.params.deepspeed == str(REPO / "infra/deepspeed/zero2.json")
    with pytest.raises(ConfigError, match=r"finetune.alpacalora.params.deepspeed: /etc/passwd resolves to /etc/passwd, "
                                          r"outside the data roots"):
        load_config("deployments/quickstart.yaml", {"finetune": {"params": {"deepspeed": "/etc/passwd"}}})
    with pytest.raises(ConfigError, match=r"finetune.llamafactory.params.config_path: \.\./x.yaml resolves to"):
        load_config("deployments/llamafactory.yaml", {"finetune": {"params": {"config_path": "../x.yaml"}}})


def test_the_range_check_itself():
    """``out_of_range`` on its own: the ends of a range, values it does not judge (no range, not a number, a
    boolean), special values, and every problem named in one message."""
    assert bounds.out_of_range({"lora_r": 1, "lora_r_top": 0}) == []  # a name without a range is not judged
    assert bounds.out_of_range({"lora_r": 1024}) == [] and bounds.out_of_range({"learning_rate": 1}) == []
    assert bounds.out_of_range({"lora_r": 1025}) == ["lora_r=1025 is out of range (1 <= lora_r <= 1024)"]
    assert bounds.out_of_range({"learning_rate": 0.0}) == ["learning_rate=0.0 is out of range "
                                                           "(0 < learning_rate <= 1)"]
    assert bounds.out_of_range({"lora_dropout": True, "lora_r": "16", "max_steps": None}) == []
    assert bounds.out_of_range({"max_steps": -1}) == [] and bounds.out_of_range({"max_steps": -2})
    assert bounds.describe("n", bounds.Bound(1, 10, also=(-1, 0))) == "1 <= n <= 10 or -1 or 0"
    with pytest.raises(ValueError, match=r"^X: lora_r=0 is out of range \(1 <= lora_r <= 1024\); batch_size=0 is "
                                         r"out of range \(1 <= batch_size <= 100000\)$"):
        bounds.check("X", {"lora_r": 0, "batch_size": 0})
    bounds.check("X", {"lora_r": 8})
