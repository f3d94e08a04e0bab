"""Shared fixtures: a private state directory for every test session, and the real local stack on free ports."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

# No model hub is reachable here: a model path that is not a folder fails at once instead of after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / "infra" / "models" / "tiny-llama"
DATASET = REPO / "infra" / "datasets" / "word_ops.json"
# A real credential, generated per session, in the environment of the stack's worker and so of every pipeline run:
# tests/test_pipeline.py checks that it shows nowhere in MLflow, the registry or the logs.
RUN_SECRET = "hf_" + secrets.token_hex(16)


@pytest.fixture(scope="session", autouse=True)
def fineflow_home(tmp_path_factory):
    """Tests never touch the developer's .fineflow/ or a configured remote stack."""
    home = tmp_path_factory.mktemp("fineflow-home")
    saved = {k: os.environ.get(k) for k in ("FINEFLOW_HOME", "MLFLOW_TRACKING_URI", "PREFECT_API_URL",
                                            "FINEFLOW_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    for k in saved:
        os.environ.pop(k, None)
    os.environ["FINEFLOW_HOME"] = str(home)
    # Pipelines read data only under the data roots (tasks.data.readers.confine): the tests' files are here.
    os.environ["FINEFLOW_DATA_ROOTS"] = str(tmp_path_factory.getbasetemp())
    yield home
    for k, v in saved.items():
        if v is not None:
            os.environ[k] = v


@pytest.fixture(scope="session")
def stack(fineflow_home):
    """The real stack: SeaweedFS, MLflow, Prefect server and worker, on free ports; stopped at the end."""
    from infra import stack as local_stack
    from infra.demo import register_deployments

    os.environ["HF_TOKEN"] = RUN_SECRET
    info = local_stack.up("free")
    os.environ["PREFECT_API_URL"] = info["prefect_api_url"]
    register_deployments()
    # The watch flow's schedule is on after deploying; the tests run it themselves, when they mean to.
    info["watch_schedules"] = pause_schedules("watch/data")
    yield info
    local_stack.down()
    os.environ.pop("HF_TOKEN", None)


def train_log(run_id: str) -> str:
    """The training log a pipeline run logged to MLflow (``logs/train.log``): the trainer's own output."""
    import tempfile

    from tasks import tracking

    with tempfile.TemporaryDirectory() as tmp:
        return Path(tracking.client().download_artifacts(run_id, "logs/train.log", tmp)).read_text()


def pause_schedules(deployment: str) -> list[dict]:
    """Turn off the schedules of ``deployment``; returns them as they were (interval, active)."""
    from prefect.client.orchestration import get_client

    from infra.demo import prefect_api

    with prefect_api(), get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        schedules = client.read_deployment_schedules(dep.id)
        for s in schedules:
            client.update_deployment_schedule(dep.id, s.id, active=False)
    return [{"interval": getattr(s.schedule, "interval", None), "active": s.active} for s in schedules]


@pytest.fixture
def alpaca_file(tmp_path):
    """Write records (dicts or raw strings) as a JSONL file; returns its path."""
    def write(rows, name="data.jsonl"):
        path = tmp_path / name
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return path
    return write


@pytest.fixture(scope="session")
def oracle_python() -> str:
    """The interpreter of the reference package's own environment (``infra/envs/lazyllm-oracle.txt``), for
    differential tests; never imported by fineflow."""
    from tasks import envs

    try:
        envs.ensure("lazyllm-oracle")
    except envs.EnvironmentBuildError as e:  # only where the package cannot be installed at all
        pytest.skip(f"the reference package lazyllm==1.4.0 could not be installed here: {str(e)[:300]}")
    return envs.bin_path("lazyllm-oracle", "python")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """The tiny model with a chat template that renders BOS and the messages' text (no generation prompt), as a
    model exported by LLaMA-Factory carries its template beside it: in ``chat_template`` style nothing is put
    in front of its prompts."""
    import shutil

    path = tmp_path_factory.mktemp("chat") / "tiny-chat"
    shutil.copytree(TINY_MODEL, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def greedy_by_hand(model, tokenizer, prompt: str, n: int, bos: bool = True) -> str:
    """Greedy decoding written out, independent of ``tasks.inference``: BOS (unless not ``bos``) + prompt, then the
    argmax of the last position, ``n`` times or until EOS; one prompt at a time, no padding."""
    import torch

    ids = tokenizer((tokenizer.bos_token if bos else "") + prompt, add_special_tokens=False).input_ids
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            out.append(nxt)
    return tokenizer.decode(out, skip_special_tokens=True)


def pytest_collection_modifyitems(items):
    """Every test that uses the real stack carries the ``stack`` mark, so ``-m 'not stack'`` leaves them out."""
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)
