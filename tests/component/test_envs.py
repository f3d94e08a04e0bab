"""Framework environments: built once from a pinned file, keyed by its hash, never used half-built, one builder
at a time; and the CoLLiE environment holds everything its training script imports."""

import subprocess
import threading

import pytest

from tasks import envs
from tests.support.paths import REPO


@pytest.fixture
def spec_dir(tmp_path, monkeypatch):
    """A private spec directory and cache. The spec pins only pip (already in every venv, so no download)."""
    specs = tmp_path / "specs"
    specs.mkdir()
    import pip

    (specs / "tiny.txt").write_text("# a test environment\n# fineflow-stub: fakeaudio\n"
                                    "# fineflow-check: python -c \"import fakeaudio\"\n"
                                    f"pip=={pip.__version__}\n")
    monkeypatch.setattr(envs, "SPEC_DIR", specs)
    monkeypatch.setenv("FINEFLOW_ENVS", str(tmp_path / "cache"))
    return specs


def test_environment_is_built_once_with_stubs_and_a_marker(spec_dir):
    lines: list[str] = []
    target = envs.ensure("tiny", log=lines.append)
    assert target == envs.env_dir("tiny") and envs.is_built("tiny")
    assert sum("building environment tiny" in line for line in lines) == 1
    python = envs.bin_path("tiny", "python")
    probe = subprocess.run([python, "-c", "import fakeaudio; fakeaudio.load"], capture_output=True, text=True)
    assert probe.returncode != 0 and "fakeaudio is a stub" in probe.stderr
    lines.clear()
    assert envs.ensure("tiny", log=lines.append) == target and lines == []  # built: nothing to do
    # A changed file is another environment.
    (spec_dir / "tiny.txt").write_text((spec_dir / "tiny.txt").read_text() + "# changed\n")
    assert envs.env_dir("tiny") != target and not envs.is_built("tiny")


def test_a_half_built_environment_is_never_used(spec_dir):
    target = envs.env_dir("tiny")
    (target / "bin").mkdir(parents=True)  # a build that died before its marker was written
    assert not envs.is_built("tiny")
    envs.ensure("tiny", log=lambda line: None)
    assert envs.is_built("tiny") and (target / "bin" / "python").exists()


def test_two_builders_take_turns(spec_dir):
    lines: list[str] = []
    threads = [threading.Thread(target=envs.ensure, args=("tiny",), kwargs={"log": lines.append}) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum("building environment tiny" in line for line in lines) == 1 and envs.is_built("tiny")


def test_unknown_environment_names_the_known_ones(spec_dir):
    with pytest.raises(ValueError, match=r"no environment named 'nope'.*known: tiny"):
        envs.ensure("nope")
    assert envs.ensure(envs.MAIN) is None


def test_the_collie_environment_has_what_the_script_imports():
    envs.ensure("collie")
    code = ("from collie import Callback, CollieConfig, CollieDatasetForTraining, LlamaForCausalLM, Trainer; "
            "from peft import LoraConfig, TaskType; import transformers, peft; "
            "print(transformers.__version__, peft.__version__)")
    out = subprocess.run([envs.bin_path("collie", "python"), "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1].split() == ["4.39.3", "0.10.0"]  # DeepSpeed logs its accelerator first


@pytest.mark.parametrize("environment,server", [
    ("flagembedding", "tasks.servers.embed"),  # the built-in embedding server, sparse: FlagEmbedding's weights
    ("media", "tasks.servers.media.app"),
    ("ray", "tasks.servers.ray_serve"),
    (None, "tasks.servers.relay"),
])
def test_each_server_imports_in_the_environment_it_runs_in(environment, server):
    """A server runs where the engines' packages are absent: it imports only what that environment holds."""
    envs.ensure(environment)
    proc = subprocess.run([envs.bin_path(environment, "python"), "-c", f"import {server}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
