"""Framework environments: built once from a pinned file, keyed by its hash, never used half-built, one builder
at a time."""

import subprocess
import threading

import pytest

from tasks import envs


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
