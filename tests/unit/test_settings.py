"""Every environment variable fineflow reads is declared once, in ``tasks.settings``; reading the environment as a
whole survives another thread changing it; the documented table is the declared one."""

from __future__ import annotations

import ast
import os
import threading

import pytest

from tasks import launchers, masking, settings
from tests.support.paths import REPO

CODE = ("tasks", "flows", "infra", "bench")
WHOLE = ("items", "keys", "values", "copy", "get", "__getitem__")  # reads of os.environ, whole or by name


def reads_outside_settings() -> list[str]:
    """``os.environ`` / ``os.getenv`` read anywhere but tasks/settings.py (writing, ``setdefault`` and ``pop`` are
    allowed: that configures a library), and ``env("NAME")`` calls naming an undeclared variable."""
    found = []
    for path in sorted(p for root in CODE for p in (REPO / root).rglob("*.py")):
        if path == REPO / "tasks" / "settings.py":
            continue
        where = path.relative_to(REPO)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "getenv" and getattr(node.value, "id", "") == "os":
                found.append(f"{where}:{node.lineno}: os.getenv")
            if isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", "") == "os":
                up = parents.get(node)
                if isinstance(up, ast.Attribute) and up.attr in WHOLE:
                    found.append(f"{where}:{node.lineno}: os.environ.{up.attr}")
                elif isinstance(up, ast.Subscript) and isinstance(up.ctx, ast.Load):
                    found.append(f"{where}:{node.lineno}: os.environ[...]")
                elif isinstance(up, (ast.Call, ast.Dict, ast.comprehension, ast.For)):  # dict(os.environ), {**...}
                    found.append(f"{where}:{node.lineno}: the whole os.environ")
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "env" \
                    and node.args and isinstance(node.args[0], ast.Constant) \
                    and node.args[0].value not in settings.VARIABLES:
                found.append(f"{where}:{node.lineno}: env({node.args[0].value!r}) is not declared")
    return sorted(found, key=lambda line: (line.split(":")[0], int(line.split(":")[1])))


def test_every_variable_is_read_through_the_declarations():
    assert not reads_outside_settings()


def test_names_built_at_run_time_are_declared_too(tmp_path, monkeypatch):
    from infra import ports
    from tasks.models import hub

    assert set(ports.PORT_VARIABLES.values()) <= set(settings.VARIABLES)
    assert set(hub.ENDPOINTS.values()) <= set(settings.VARIABLES)
    monkeypatch.setenv("FINEFLOW_MLFLOW_PORT", "15999")
    assert ports.chosen(tmp_path, "default")["mlflow"] == 15999 and ports.chosen(tmp_path, "default")["s3"] == 18333
    assert hub.endpoint("huggingface") == "https://huggingface.co"


def test_an_undeclared_name_is_refused_and_defaults_apply(monkeypatch):
    with pytest.raises(KeyError, match="NOT_A_FINEFLOW_VARIABLE is not declared"):
        settings.env("NOT_A_FINEFLOW_VARIABLE")
    monkeypatch.delenv("LAZYLLM_GPU_MEMORY", raising=False)
    assert settings.env("LAZYLLM_GPU_MEMORY") == "80" and settings.env("LAZYLLM_GPU_MEMORY", None) is None
    monkeypatch.setenv("LAZYLLM_GPU_MEMORY", "")  # empty is unset
    assert settings.env("LAZYLLM_GPU_MEMORY") == "80"
    monkeypatch.setenv("LAZYLLM_GPU_MEMORY", "24")
    assert settings.env("LAZYLLM_GPU_MEMORY") == "24"


def test_the_check_catches_a_direct_read(tmp_path, monkeypatch):
    """The rule holds because it is checked: a module reading ``os.environ`` itself is found."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "rogue.py").write_text('import os\nA = os.environ.get("X")\nB = os.environ["Y"]\n'
                                                 'C = dict(os.environ)\nD = os.getenv("Z")\nE = env("UNDECLARED_X")\n'
                                                 'os.environ.setdefault("OK", "1")\n')
    monkeypatch.setattr("tests.unit.test_settings.REPO", tmp_path)
    assert [line.split(": ", 1)[1] for line in reads_outside_settings()] == [
        "os.environ.get", "os.environ[...]", "the whole os.environ", "os.getenv", "env('UNDECLARED_X') is not declared"]


def test_reading_the_environment_survives_a_thread_that_changes_it(monkeypatch):
    """MLflow's telemetry thread sets and unsets a variable while a run starts; copying or masking the environment
    meanwhile must not fail (iterating ``os.environ`` itself raises KeyError then)."""
    monkeypatch.setenv("FINEFLOW_TEST_TOKEN", "secret-value-123456")
    stop, errors = threading.Event(), []

    def churn():
        i = 0
        while not stop.is_set():
            os.environ[f"FINEFLOW_CHURN_{i % 50}"] = "x"
            os.environ.pop(f"FINEFLOW_CHURN_{(i + 25) % 50}", None)
            i += 1

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            try:
                assert "secret-value-123456" not in masking.redact_text("a secret-value-123456 b")
                assert "FINEFLOW_TEST_TOKEN" not in launchers.child_environment()  # a credential: left out
                settings.environ()
            except (KeyError, RuntimeError) as e:
                errors.append(e)
    finally:
        stop.set()
        thread.join()
        for i in range(50):
            os.environ.pop(f"FINEFLOW_CHURN_{i}", None)
    assert not errors


def test_the_documented_table_is_the_declared_one():
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert settings.markdown_table() in doc
    assert all(f"`{name}`" in doc for name in settings.VARIABLES)


def test_telemetry_is_off_in_the_stack_and_what_fineflow_starts_unless_asked_for(tmp_path, monkeypatch):
    from infra import stack
    from infra.ports import PORT_VARIABLES

    monkeypatch.delenv("FINEFLOW_TELEMETRY", raising=False)
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "0")  # a choice the user made is kept
    child = launchers.child_environment()
    assert child["MLFLOW_DISABLE_TELEMETRY"] == "true" and child["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert child["DO_NOT_TRACK"] == "0"
    ports = dict.fromkeys(PORT_VARIABLES, 1)
    services = {svc.name: svc.env for svc in stack.services(tmp_path, ports)}
    assert all(e[k] == v for e in services.values() for k, v in settings.TELEMETRY_OFF.items())
    assert services["mlflow"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"  # its unused job consumers
    monkeypatch.setenv("FINEFLOW_TELEMETRY", "on")
    assert "MLFLOW_DISABLE_TELEMETRY" not in launchers.child_environment()
    assert "RAY_USAGE_STATS_ENABLED" not in stack.services(tmp_path, ports)[0].env


def test_the_local_stacks_ray_head_port_is_outside_the_ports_ray_gives_its_workers():
    """Ray refuses a head port inside its workers' port range (10002-19999 unless ``--min/max-worker-port`` say
    otherwise): ``FINEFLOW_SERVING=ray make up`` with such a default failed at once."""
    port = int(settings.VARIABLES["FINEFLOW_RAY_PORT"].default)
    assert not 10002 <= port <= 19999, port
