"""Secret masking by meaning: credentials are hidden in params, tags, argv and logs; ordinary names that merely
contain a secret word (``max_new_tokens``, ``--tokenizer``) are never touched."""

from __future__ import annotations

import secrets

import pytest

from tasks import launchers
from tasks.core import Command
from tasks.masking import (MASK, REDACTED, is_secret_name, known_secret_values, mask_argv, redact, redact_text,
                           register_secret, show_argv)
from tasks.net import ready as http_ready
from tasks.services import tracking
from tasks.serving import endpoints

SECRET_NAMES = ["api_key", "--api-key", "s3.secret_key", "access_key", "private_key", "hf_token", "--hf-token",
                "token", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
                "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "PREFECT_API_KEY",
                "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING", "HUGGING_FACE_HUB_TOKEN",
                "LAZYLLM_MODEL_SOURCE_TOKEN", "client_secret",
                "secretvalue", "db_password", "passwd", "authorization", "Authorization", "basic_auth", "apikey",
                "x.credentials", "openai-api-key"]
ORDINARY_NAMES = ["max_new_tokens", "evaluate.max_new_tokens", "--max_tokens", "max_tokens", "--tokenizer",
                  "tokenizer", "num_tokens", "token_count", "tokens_per_second", "cutoff_len", "key", "cache_key",
                  "sort_key", "keyword", "monkey", "author", "tool_start_token_id", "s3.endpoint", "", "---"]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_credential_names_are_secret(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ORDINARY_NAMES)
def test_ordinary_names_are_not_secret(name):
    assert not is_secret_name(name)


def test_argv_masks_credential_values_and_keeps_ordinary_ones():
    argv = ["serve", "--hf-token", "abc", "--max_tokens", "64", "--tokenizer", "tok/path", "HF_TOKEN=x",
            "--api-key=k", "AWS_SECRET_ACCESS_KEY=s", "--max_new_tokens=8", "--port", "80", "--password"]
    assert mask_argv(argv) == ["serve", "--hf-token", MASK, "--max_tokens", "64", "--tokenizer", "tok/path",
                               f"HF_TOKEN={MASK}", f"--api-key={MASK}", f"AWS_SECRET_ACCESS_KEY={MASK}",
                               "--max_new_tokens=8", "--port", "80", "--password"]
    assert show_argv(["run", "a b", "--password", "p w", 3]) == f"run 'a b' --password '{MASK}' 3"
    assert "abc" not in str(Command(argv)) and "--max_tokens 64" in str(Command(argv))


def test_params_and_tags_keep_ordinary_values():
    params = {"evaluate": {"max_new_tokens": 32, "max_samples": 200}, "hf_token": "t", "auth": "",
              "s3": {"secret_key": "abc", "endpoint": "http://x", "api_key": None}, "tags": [{"password": "p"}, 4]}
    assert redact(params) == {"evaluate": {"max_new_tokens": 32, "max_samples": 200}, "hf_token": REDACTED,
                              "auth": "", "s3": {"secret_key": REDACTED, "endpoint": "http://x", "api_key": None},
                              "tags": [{"password": REDACTED}, 4]}
    assert tracking.flatten(redact(params))["evaluate.max_new_tokens"] == "32"


def test_known_secret_values_are_masked_under_any_name(monkeypatch):
    value = "hf_" + secrets.token_hex(12)
    monkeypatch.setenv("HF_TOKEN", value)
    monkeypatch.setenv("FINEFLOW_NOTE", "not-a-secret-value")  # an ordinary variable's value stays visible
    assert value in known_secret_values() and "not-a-secret-value" not in known_secret_values()
    assert redact({"url": f"https://user:{value}@hub", "n": 3}) == {"url": f"https://user:{MASK}@hub", "n": 3}
    assert mask_argv(["--remote", f"https://{value}@x", "not-a-secret-value"]) == \
        ["--remote", f"https://{MASK}@x", "not-a-secret-value"]
    record = tracking.environment_record()
    assert f"HF_TOKEN={REDACTED}" in record and "FINEFLOW_NOTE=not-a-secret-value" in record and value not in record


def test_registered_secrets_are_masked_and_short_values_are_not_registered():
    value = secrets.token_urlsafe(16)
    register_secret(value)
    register_secret("abc")  # too short to mask safely: "abc" would be hidden inside ordinary words
    assert redact_text(f"token {value}; abcdef") == f"token {MASK}; abcdef"
    # The longest secret goes first, so no part of a secret that contains another is left (sorted by text, the
    # shorter one, which starts with a later letter, would go first and leave "aaaaaa-" behind).
    short = "z" + secrets.token_hex(6)
    register_secret(short)
    register_secret("aaaaaa-" + short)
    assert redact_text(f"<aaaaaa-{short}>") == f"<{MASK}>"


def test_the_shortest_secret_masked_is_six_characters(monkeypatch):
    register_secret("5char")
    register_secret("6chars")
    monkeypatch.setenv("SHORT_TOKEN", "4chr")
    monkeypatch.setenv("SIX_TOKEN", "6-char")
    assert redact_text("5char 6chars 4chr 6-char") == f"5char {MASK} 4chr {MASK}"


def test_a_secret_flag_value_that_holds_an_equals_sign_is_masked_whole():
    assert mask_argv(["--api-key=abc=def", "--max_tokens=a=b"]) == [f"--api-key={MASK}", "--max_tokens=a=b"]


def test_a_child_that_prints_a_secret_does_not_put_it_in_the_log(tmp_path, monkeypatch):
    value = secrets.token_hex(16)
    monkeypatch.setenv("MY_SERVICE_API_KEY", value)
    seen: list[str] = []
    launcher = launchers.local(log_path=tmp_path / "train.log", on_line=seen.append)
    script = ("import os, sys; print('key is', os.environ['MY_SERVICE_API_KEY']); print('max_new_tokens 32'); "
              "sys.exit(2)")
    with pytest.raises(launchers.LaunchError) as e:
        # Children get no credentials from the environment; a command that needs one passes it itself.
        launcher.run(["python3", "-c", script], name="leaky", extra_env={"MY_SERVICE_API_KEY": value})
    log = (tmp_path / "train.log").read_text()
    for text in (log, str(e.value), "\n".join(seen)):
        assert value not in text and f"key is {MASK}" in text and "max_new_tokens 32" in text


def test_an_endpoint_that_fails_does_not_show_a_secret_from_its_log(fineflow_home, monkeypatch):
    value = secrets.token_hex(16)
    monkeypatch.setenv("PREFECT_API_KEY", value)
    command = Command(["python3", "-c", "import os; print('using', os.environ['PREFECT_API_KEY']); exit(1)"],
                      return_value="http://127.0.0.1:9", checker=http_ready("http://127.0.0.1:9/health"),
                      ready_timeout_s=10, env={"PREFECT_API_KEY": value})
    with pytest.raises(RuntimeError) as e:
        endpoints.start("leaky", command, "test", "none")
    assert f"using {MASK}" in str(e.value) and value not in str(e.value)
