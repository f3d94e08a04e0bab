"""The endpoints' API key: made once in a private file, masked from then on; a key in the environment wins; the CLI
shows where the key is, never the key."""

import re
import sys

import pytest

from tasks.masking import redact_text
from tasks.services import keys


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("FINEFLOW_API_KEY", raising=False)
    return tmp_path


def test_the_key_is_made_once_in_a_private_file_and_masked(home):
    key = keys.api_key()
    assert keys.key_path() == home / "api_key"
    assert re.fullmatch(r"ff-[A-Za-z0-9_-]{43}", key)  # 32 random bytes, URL-safe
    assert (home / "api_key").read_text() == key and (home / "api_key").stat().st_mode & 0o777 == 0o600
    assert keys.api_key() == key
    assert keys.auth_headers() == {"Authorization": f"Bearer {key}"}
    assert redact_text(f"curl -H 'Authorization: Bearer {key}'") == "curl -H 'Authorization: Bearer ******'"


def test_a_key_file_written_by_hand_is_read_without_its_newline(home):
    (home / "api_key").write_text("ff-written-by-an-operator-0123456789\n")
    assert keys.api_key() == "ff-written-by-an-operator-0123456789"
    assert redact_text("ff-written-by-an-operator-0123456789") == "******"


def test_a_key_in_the_environment_wins_and_no_file_is_made(home, monkeypatch):
    monkeypatch.setenv("FINEFLOW_API_KEY", "shared-by-several-machines-0123456789")
    assert keys.api_key() == "shared-by-several-machines-0123456789"
    assert keys.auth_headers() == {"Authorization": "Bearer shared-by-several-machines-0123456789"}
    assert not (home / "api_key").exists()
    assert redact_text("key shared-by-several-machines-0123456789") == "key ******"


def test_the_cli_prints_where_the_key_is_and_never_the_key(home, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["keys", "path"])
    keys.main()
    key = (home / "api_key").read_text()
    assert capsys.readouterr().out == f"{home / 'api_key'}\n"
    keys.main(["path"])
    assert capsys.readouterr().out == f"{home / 'api_key'}\n" and (home / "api_key").read_text() == key
    for argv in ([], ["show"], ["path", "again"]):
        with pytest.raises(SystemExit, match=r"^usage: python -m tasks.services.keys path$"):
            keys.main(argv)
    monkeypatch.setattr(sys, "argv", ["keys"])
    with pytest.raises(SystemExit, match="^usage"):
        keys.main()
    assert key not in capsys.readouterr().out
