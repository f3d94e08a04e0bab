"""Framework environments: built once from a pinned file, keyed by its hash, never used half-built, one builder
at a time; and secret masking that hides secrets without hiding ordinary names."""

import subprocess
import threading

import pytest

from tasks import envs
from tasks.masking import REDACTED, is_secret_name, mask_argv, redact, show_argv


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


def test_masking_hides_secrets_but_not_names_that_merely_contain_a_secret_word():
    argv = ["serve", "--hf-token", "abc", "--max_tokens", "64", "--tokenizer", "tok/path", "HF_TOKEN=x",
            "--api-key=k", "AWS_SECRET_ACCESS_KEY=s", "--max_new_tokens=8"]
    assert mask_argv(argv) == ["serve", "--hf-token", "******", "--max_tokens", "64", "--tokenizer", "tok/path",
                               "HF_TOKEN=******", "--api-key=******", "AWS_SECRET_ACCESS_KEY=******",
                               "--max_new_tokens=8"]
    assert show_argv(["run", "a b", "--password", "p w"]) == "run 'a b' --password '******'"
    assert [is_secret_name(n) for n in ("evaluate.max_new_tokens", "cutoff_len", "api_key", "s3.secret_key",
                                        "token", "tokens_per_second")] == [False, False, True, True, True, False]
    assert redact({"evaluate": {"max_new_tokens": 32}, "hf_token": "t", "auth": ""}) == \
        {"evaluate": {"max_new_tokens": 32}, "hf_token": REDACTED, "auth": ""}
