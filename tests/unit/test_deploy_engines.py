"""The serving engines of the contract: their keywords and defaults, the exact commands and files they produce,
failing at once where they cannot run, and AutoDeploy's rules. vLLM is started for real by the
``finetune/quickstart-vllm`` pipeline test (tests/e2e/test_pipeline.py): one start per run."""

from __future__ import annotations

import json
import logging
import shutil

import jinja2
import pytest

from tasks import envs, inference
from tasks.core import UnknownKwargsError
from tasks.deploy import (ENGINES, AutoDeploy, EngineUnavailableError, Lightllm, LMDeploy, Mindie, RelayServer, Vllm,
                          auto)
from tasks.deploy.auto import gpus_needed
from tasks.deploy.relay import ADAPTER_BATCH_WAIT_MS, RelayParams
from tasks.pipeline.config import ConfigError, load_config
from tests.support.commands import argv_options
from tests.support.paths import TINY_MODEL

TINY = str(TINY_MODEL)


def test_vllm_takes_the_contracts_keywords_and_defaults():
    p = Vllm().params
    assert (p.tensor_parallel_size, p.dtype, p.kv_cache_dtype, p.device, p.seed, p.tokenizer_mode, p.max_num_seqs,
            p.pipeline_parallel_size, p.max_num_batched_tokens) == (1, "auto", "auto", "auto", 0, "auto", 256, 1, 64000)
    assert Vllm().params.openai_api is False and Vllm().api_key_env is None  # the contract's plain server
    dashed = Vllm(**{"tensor-parallel-size": 2, "max-num-seqs": 8, "block-size": 64}).params
    assert (dashed.tensor_parallel_size, dashed.max_num_seqs, dashed.block_size) == (2, 8, 64)
    assert Vllm(tensor_parallel_size=4).params.tensor_parallel_size == 4
    with pytest.raises(UnknownKwargsError, match="'tensor_paralel_size': did you mean 'tensor_parallel_size'"):
        Vllm(tensor_paralel_size=2)
    with pytest.raises(ValueError, match="dtype"):
        Vllm(dtype="int3")


def test_vllm_command_is_exact_and_reads_back(fineflow_home):
    engine = Vllm(openai_api=True, port=8123, name="tiny", dtype="float32", **{"max-num-seqs": 8})
    command = engine.cmd(TINY)
    argv = command.argvs[-1]
    assert argv[:3] == [envs.bin_path("vllm", "python"), "-m", "vllm.entrypoints.openai.api_server"]
    opts = argv_options(argv, 3)
    template = opts.pop("--chat-template")
    assert opts == {"--model": TINY, "--host": "127.0.0.1", "--port": "8123", "--served-model-name": "tiny",
                    "--tensor-parallel-size": "1", "--dtype": "float32", "--kv-cache-dtype": "auto",
                    "--block-size": "32", "--seed": "0", "--tokenizer-mode": "auto", "--max-num-seqs": "8",
                    "--pipeline-parallel-size": "1", "--max-num-batched-tokens": "64000",
                    "--trust-remote-code": True}
    assert command.return_value == "http://127.0.0.1:8123" and engine.geturl() == "http://127.0.0.1:8123/v1"
    assert command.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and command.ready_timeout_s == 300
    # The chat template renders a chat as the alpaca prompt the model was trained on, BOS in front.
    tok = inference.load_tokenizer(TINY)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse the word.\nsaw"}]
    rendered = jinja2.Environment().from_string(open(template).read()).render(messages=messages,
                                                                            bos_token=tok.bos_token)
    assert rendered == tok.bos_token + inference.render_prompt("alpaca", {"messages": messages})
    path, body = engine.smoke_request("hello", TINY)
    assert (path, body) == ("/v1/completions", {"model": "tiny", "prompt": "<s>hello", "max_tokens": 16,
                                                "temperature": 0})
    plain = Vllm(port=8124, max_model_len=128, **{"enforce-eager": True})
    argv = plain.cmd(TINY).argvs[-1]
    assert argv[2] == "vllm.entrypoints.api_server" and "--served-model-name" not in argv
    assert argv_options(argv, 3)["--enforce-eager"] is True and "--enforce-eager" not in engine.cmd(TINY).argvs[-1]
    assert "--chat-template" not in argv and argv_options(argv, 3)["--max-model-len"] == "128"
    assert plain.geturl() == "http://127.0.0.1:8124/generate" and plain.smoke_request("x")[0] == "/generate"


def test_vllm_serves_the_base_when_the_finetuned_folder_has_no_weights(tmp_path, caplog, fineflow_home):
    empty = tmp_path / "merged"
    empty.mkdir()
    with caplog.at_level(logging.WARNING):
        argv = Vllm(port=1).cmd(str(empty), base_model=TINY).argvs[-1]
    assert argv_options(argv, 3)["--model"] == TINY and f"no weights in the finetuned model {empty}" in caplog.text
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    argv = Vllm(port=1, name="m").cmd(str(adapter), base_model=TINY).argvs[-1]
    opts = argv_options(argv, 3)
    assert opts["--model"] == TINY and opts["--enable-lora"] is True and opts["--lora-modules"] == f"m-adapter={adapter}"
    # Adapters loaded while it runs: vLLM allows its runtime LoRA routes only with this variable set.
    runtime = Vllm(port=1, name="m", **{"max-loras": 4, "max-lora-rank": 32}).cmd(TINY)
    opts = argv_options(runtime.argvs[-1], 3)
    assert (opts["--enable-lora"], opts["--max-loras"], opts["--max-lora-rank"]) == (True, "4", "32")
    assert "--lora-modules" not in opts and runtime.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in Vllm(port=1).cmd(TINY).env
    with pytest.raises(FileNotFoundError, match="vLLM has no model to serve"):
        Vllm(port=1).cmd(str(empty), base_model=str(tmp_path / "nothing"))


def test_vllm_result_extraction_reads_both_servers():
    assert Vllm.extract_result('{"text": ["hello world"]}', "hello") == "hello world"  # as the reference does
    assert Vllm.extract_result(json.dumps({"choices": [{"text": "abc"}]}), "") == "abc"
    assert Vllm.extract_result(json.dumps({"choices": [{"message": {"content": "hi"}}]}), "") == "hi"


def test_lmdeploy_command_and_its_refusal_here():
    engine = LMDeploy(**{"server-port": 23333, "tp": 2, "chat-template": "/t.json"})
    assert (engine.params.max_batch_size, engine.params.eager_mode) == (128, False)
    argv = engine.cmd(TINY).argvs[-1]
    assert argv == ["lmdeploy", "serve", "api_server", TINY, "--model-name", "fineflow-model", "--server-name",
                    "127.0.0.1", "--server-port", "23333", "--tp", "2", "--max-batch-size", "128",
                    "--chat-template", "/t.json"]
    assert engine.geturl() == "http://127.0.0.1:23333/v1/chat/interactive"
    assert LMDeploy.extract_result('{"text": "hi"}', "x") == "hi"
    assert not LMDeploy.supports_api_key(None)
    if shutil.which("lmdeploy") is None:
        with pytest.raises(EngineUnavailableError, match=r"LMDeploy cannot start here: missing the `lmdeploy` "
                                                         r"program .*a CUDA GPU"):
            engine.preflight()


def test_lmdeploy_eager_mode_follows_its_environment_variable(monkeypatch):
    monkeypatch.setenv("LMDEPLOY_EAGER_MODE", "1")
    assert LMDeploy().params.eager_mode and "--eager-mode" in LMDeploy(port=1).cmd(TINY).argvs[-1]


def test_lightllm_command_and_its_refusal_here():
    engine = Lightllm(port=8080, nccl_port=28765, tp=2)
    argv = engine.cmd(TINY).argvs[-1]
    assert argv[1:] == ["-m", "lightllm.server.api_server", "--model_dir", TINY, "--tp=2",
                        "--max_total_token_num=64000", "--eos_id=2", "--port=8080", "--host=127.0.0.1",
                        "--nccl_port=28765", "--tokenizer_mode=auto", "--running_max_req_size=256",
                        "--data_type=float16", "--max_req_total_len=64000", "--max_req_input_len=4096",
                        "--long_truncation_mode=head", "--trust_remote_code"]
    assert engine.geturl() == "http://127.0.0.1:8080/generate"
    assert Lightllm.extract_result('{"generated_text": ["hey"]}', "x") == "hey"
    with pytest.raises(EngineUnavailableError, match="LightLLM cannot start here: missing the `lightllm` package"):
        engine.preflight()


def test_mindie_writes_its_config_with_a_backup_and_restores_it(tmp_path, monkeypatch):
    home = tmp_path / "mindie"
    conf = home / "mindie-service" / "conf" / "config.json"
    conf.parent.mkdir(parents=True)
    original = {"ServerConfig": {"ipAddress": "1.2.3.4", "port": 1025, "httpsEnabled": True, "maxLinkNum": 7},
                "BackendConfig": {"npuDeviceIds": [[0, 1, 2, 3]], "ModelDeployConfig": {
                    "maxSeqLen": 2560, "ModelConfig": [{"modelName": "llama", "modelWeightPath": "/d", "worldSize": 4,
                                                        "backendType": "atb"}]},
                                  "ScheduleConfig": {"maxPrefillTokens": 1, "maxBatchSize": 200}}}
    conf.write_text(json.dumps(original))
    monkeypatch.setenv("LAZYLLM_MINDIE_HOME", str(home))
    engine = Mindie(port=31000, npuDeviceIds=[[0, 1]], worldSize=2, maxSeqLen=4096)
    command = engine.cmd(TINY)
    assert command.argvs == [[str(home / "mindie-service" / "bin" / "mindieservice_daemon")]]
    written = json.loads(conf.read_text())
    assert written["ServerConfig"] == {"ipAddress": "127.0.0.1", "port": 31000, "httpsEnabled": False, "maxLinkNum": 7}
    deploy = written["BackendConfig"]["ModelDeployConfig"]
    assert written["BackendConfig"]["npuDeviceIds"] == [[0, 1]] and deploy["maxSeqLen"] == 4096
    assert deploy["maxInputTokenLen"] == 4096 and written["BackendConfig"]["ScheduleConfig"] == \
        {"maxPrefillTokens": 8192, "maxBatchSize": 200}
    assert deploy["ModelConfig"] == [{"modelName": "tiny-llama", "modelWeightPath": TINY, "worldSize": 2,
                                      "backendType": "atb", "trust_remote_code": True}]
    assert json.loads(engine.backup_path.read_text()) == original
    Mindie(port=31001).cmd(TINY)  # a second deployment keeps the true original as the backup
    assert json.loads(engine.backup_path.read_text()) == original
    with pytest.raises(EngineUnavailableError, match=r"MindIE cannot start here: missing the MindIE daemon .*"
                                                     r"an Ascend NPU"):
        engine.preflight()
    engine.after_start()
    assert json.loads(conf.read_text()) == original and not engine.backup_path.exists()
    monkeypatch.delenv("LAZYLLM_MINDIE_HOME")
    with pytest.raises(EngineUnavailableError, match="missing LAZYLLM_MINDIE_HOME"):
        Mindie().preflight()


def test_autodeploy_rules(monkeypatch):
    assert [gpus_needed(b, 1024, 80) for b in (0.5, 7, 34, 70, 180)] == [1, 1, 1, 2, 8]
    assert gpus_needed(70, 1024, 24) == 8 and gpus_needed(7, 32768, 24) == 2
    monkeypatch.setattr(envs, "is_built", lambda name: name is None)  # no framework environment built
    engine = AutoDeploy(TINY, name="t", prompt_style="alpaca")
    plan = engine.auto_plan
    assert isinstance(engine, RelayServer) and (plan.engine, plan.model_type, plan.ngpus) == ("relay", "llm", 0)
    assert "vllm: environment vllm not built" in plan.reason and "LightLLM cannot start here" in plan.reason
    assert engine.params.ready_timeout_s == 120  # the chosen engine's default, unless the pipeline says otherwise
    assert AutoDeploy(TINY, ready_timeout_s=7).params.ready_timeout_s == 7
    monkeypatch.setattr(envs, "is_built", lambda name: True)
    engine = auto("internlm2-chat-20b", max_token_num=4096)
    assert isinstance(engine, Vllm) and engine.params.openai_api and engine.auto_plan.model_size_b == 20
    assert engine.params.tensor_parallel_size == 1 and "20B parameters, 4096 tokens" in engine.auto_plan.reason
    monkeypatch.setenv("LAZYLLM_GPU_MEMORY", "24")
    engine, _, kw = AutoDeploy.get_deployer("internlm2-chat-20b")
    assert engine is Vllm and kw["tensor-parallel-size"] == 2 and kw["auto_plan"].ngpus == 2
    with pytest.raises(ValueError, match="AutoDeploy knows no engine for cross_modal_embed models"):
        AutoDeploy("clip-x", type="cross_modal_embed")
    # Speech goes by the model's name; OCR and images by type.
    assert type(AutoDeploy("bark", type="tts")).__name__ == "BarkDeploy"
    assert type(AutoDeploy("en_US-joe-medium", type="tts")).__name__ == "PiperDeploy"
    assert type(AutoDeploy("SenseVoiceSmall")).__name__ == "SenseVoiceDeploy"
    assert type(AutoDeploy("whisper-tiny.en")).__name__ == "WhisperDeploy"
    assert type(AutoDeploy("pp-ocrv6-small")).__name__ == "OCRDeploy"
    assert AutoDeploy("pp-ocrv6-small").auto_plan.reason.startswith("ocr model: ocr, the first installed of ocr")


def test_every_engine_of_the_table_is_a_pipeline_backend(tmp_path):
    """Each row of the table (kept in step with the modules by tests/unit/test_registries.py) validates as a
    pipeline's ``deploy.backend`` for a model of a type it serves."""
    llm = load_config("deployments/quickstart.yaml").model_dump(mode="json")
    by_type = {"embed": load_config("deployments/flagembedding.yaml").model_dump(mode="json"),
               "rerank": load_config("deployments/flagembedding-rerank.yaml").model_dump(mode="json")}
    from tasks.pipeline.serve import load_serve_config

    media = load_serve_config("deployments/serve/ocr.yaml").model_dump(mode="json")
    for name in ENGINES:
        if ENGINES[name].serves[0] in ("ocr", "tts", "stt", "sd"):  # deploy-only pipelines (tasks/pipeline/serve.py)
            cfg = {**media, "model": {"name": "m", "type": ENGINES[name].serves[0]}, "deploy": {"backend": name}}
            path = tmp_path / f"{name}.yaml"
            path.write_text(json.dumps(cfg))
            assert load_serve_config(path).deploy.backend == name
            continue
        base = by_type.get(ENGINES[name].serves[0], llm)
        cfg = {**base, "deploy": {"backend": name, **({} if ENGINES[name].supports_api_key(None) else
                                                     {"api_key": False})}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(cfg))
        assert load_config(path).deploy.backend == name


@pytest.mark.parametrize("deploy,message", [
    ({"backend": "relay", "host": "0.0.0.0", "api_key": False}, "host 0.0.0.0 with api_key: false would serve anyone"),
    ({"backend": "lmdeploy"}, "deploy engine 'lmdeploy' cannot require an API key"),
    ({"backend": "vllm", "params": {"openai_api": False}}, "deploy engine 'vllm' cannot require an API key"),
    ({"backend": "vllm", "params": {"block-size": 0}}, "block-size"),
    ({"backend": "embedding"}, "deploy.backend 'embedding' serves embed models; model.base_model 'tiny-llama' is a llm"),
])
def test_deploy_sections_that_would_expose_an_endpoint_are_refused(tmp_path, deploy, message):
    cfg = {**load_config("deployments/quickstart.yaml").model_dump(mode="json"), "deploy": deploy}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    assert load_config("deployments/quickstart-vllm.yaml").deploy.params.max_num_seqs == 16




def test_adapter_serving_is_an_engine_seam_the_config_checks(tmp_path):
    """``deploy.serve: adapter`` needs an engine that serves LoRA adapters at runtime (``serves_adapters``, with
    its own ``with_adapters``); the others refuse it when the config loads, naming the ones that can."""
    capable = sorted(n for n, e in ENGINES.items() if e.serves_adapters)
    assert capable == ["relay", "vllm"]
    for name, engine in ENGINES.items():  # the flag and the method go together
        assert engine.serves_adapters == ("with_adapters" in vars(engine)), name
    relay = RelayServer(port=1, name="tiny")
    relay.with_adapters(3, "sha256:abc", "/srv/adapters")
    opts = argv_options(relay.cmd(TINY).argvs[-1], 3)
    assert (opts["--max-adapters"], opts["--base-revision"], opts["--adapter-root"]) == ("3", "sha256:abc",
                                                                                      "/srv/adapters")
    assert "--adapter-state" not in relay.cmd(TINY).argvs[-1]  # a platform that brings adapters back itself
    relay.with_adapters(3, "sha256:abc", "/srv/adapters", "/srv/adapters/bases/b.json")
    assert argv_options(relay.cmd(TINY).argvs[-1], 3)["--adapter-state"] == "/srv/adapters/bases/b.json"
    assert "--max-adapters" not in RelayServer(port=1).cmd(TINY).argvs[-1]
    vllm = Vllm(port=1, name="m", openai_api=True)
    vllm.with_adapters(5, "sha256:abc", "/srv/adapters")
    served = vllm.cmd(TINY)
    assert argv_options(served.argvs[-1], 3)["--max-loras"] == "5"
    assert served.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    with pytest.raises(ValueError, match="deploy engine 'lmdeploy' serves no LoRA adapters"):
        LMDeploy(port=1).with_adapters(2, "sha256:abc", "/srv")
    head = "name: x\ndata: {path: infra/datasets/word_ops.json}\nregistry: {model_name: m}\n"
    for deploy, message in (("{backend: lmdeploy, serve: adapter}", r"serve: adapter needs an engine that serves "
                                                                     r"LoRA adapters on a shared base \(relay, vllm\)"),
                            ("{backend: relay, serve: adapter, max_adapters: 0}", r"max_adapters"),
                            ("{backend: relay, serve: whole}", r"deploy.relay.serve")):
        path = tmp_path / "c.yaml"
        path.write_text(head + f"deploy: {deploy}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    path.write_text(head + "deploy: {backend: relay, serve: adapter, max_adapters: 4}\n")
    deploy = load_config(path).deploy
    assert (deploy.serve, deploy.max_adapters) == ("adapter", 4)
    # A shared base waits longer for a batch's rows by default (requests for its adapters arrive apart); a wait
    # the config sets is kept, and a merged model's endpoint keeps the server's default.
    assert deploy.params.batch_wait_ms == ADAPTER_BATCH_WAIT_MS > RelayParams().batch_wait_ms
    path.write_text(head + "deploy: {backend: relay, serve: adapter, params: {batch_wait_ms: 7}}\n")
    assert load_config(path).deploy.params.batch_wait_ms == 7
    path.write_text(head + "deploy: {backend: relay}\n")
    assert load_config(path).deploy.params.batch_wait_ms == RelayParams().batch_wait_ms
    assert Vllm.shared_base_params(params := Vllm.Params()) is params  # engines without such defaults
