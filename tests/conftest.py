"""Fixtures every tier shares, each defined once: a private state directory for the session, the embedded tiny model
loaded once, a chat-template copy of it, a small prepared dataset, JSONL files, the reference package's interpreter.
The stack's fixtures are in ``tests/e2e/conftest.py``.

The tiers are folders: ``unit/`` (no server, no training: seconds; ``make test-fast``), ``component/`` (one real
server, one real training, or one framework environment), ``e2e/`` (the local stack and its worker). Each test is
marked with its tier, so ``-m unit`` and the like select them too.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from tests.support.paths import DATASET, TINY_MODEL

# No model hub is reachable here: a model path that is not a folder fails at once instead of after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TIERS = ("unit", "component", "e2e")


def pytest_make_parametrize_id(config, val, argname):
    """A string parameter's id without backslashes, newlines or non-ASCII: pytest escapes those, and the escaped id
    no longer selects its test on a command line (``bench/mutation.py`` runs tests by id)."""
    if isinstance(val, str) and re.search(r"[^\x20-\x7e]|\\", val):
        return re.sub(r"[^\x20-\x5b\x5d-\x7e]+", "_", val)
    return None


def pytest_collection_modifyitems(items):
    """Mark each test with its tier (its folder), and a test that uses the stack with ``stack`` too."""
    for item in items:
        tier = next((t for t in TIERS if f"/tests/{t}/" in str(item.path)), None)
        if tier:
            item.add_marker(getattr(pytest.mark, tier))
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session", autouse=True)
def fineflow_home(tmp_path_factory):
    """Tests never touch the developer's .fineflow/ or a configured remote stack."""
    home = tmp_path_factory.mktemp("fineflow-home")
    saved = {k: os.environ.get(k) for k in ("FINEFLOW_HOME", "MLFLOW_TRACKING_URI", "PREFECT_API_URL",
                                            "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME",
                                            "MLFLOW_TRACKING_PASSWORD",
                                            "FINEFLOW_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "FINEFLOW_DATA_ROOTS")}
    for k in saved:
        os.environ.pop(k, None)
    os.environ["FINEFLOW_HOME"] = str(home)
    # Pipelines read data only under the data roots (tasks.data.readers.confine): the tests' files are here.
    os.environ["FINEFLOW_DATA_ROOTS"] = str(tmp_path_factory.getbasetemp())
    yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny():
    """The embedded tiny LLaMA and its tokenizer, loaded once (``tasks.inference.load_model``)."""
    from tasks import inference

    return inference.load_model(str(TINY_MODEL))


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory):
    """The tiny model with a chat template that renders BOS and the messages' text (no generation prompt), as a
    model exported by LLaMA-Factory carries its template beside it: in ``chat_template`` style nothing is put
    in front of its prompts."""
    path = tmp_path_factory.mktemp("chat") / "tiny-chat"
    shutil.copytree(TINY_MODEL, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """The first 64 records of the bundled dataset, prepared (alpaca prompts, 8 held out): enough to train on."""
    from tasks.data import prepare

    path = tmp_path_factory.mktemp("data") / "small.json"
    path.write_text(json.dumps(json.loads(DATASET.read_text())[:64]))
    return prepare(path, path.parent / "prepared", val_set_size=8)


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
