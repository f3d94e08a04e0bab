"""The registry against the real tracking server: "no alias" only when the alias or the model does not exist; a
server that does not answer is an error, never "none" (a run that took it for "none" would lose the version it must
beat or roll back to)."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from tasks import net
from tasks.services import registry, tracking


def test_no_alias_only_when_there_is_none_and_an_error_when_mlflow_does_not_answer(stack, monkeypatch):
    assert registry.alias_version("fineflow-no-such-model", "production") is None
    run = tracking.start_run("fineflow-tests", "registry", tags={}, params={})
    registry.create_version("fineflow-registry-test", "s3://fineflow/test-models/none", run, {})
    assert registry.alias_version("fineflow-registry-test", "production") is None
    registry.move_alias("fineflow-registry-test", "production", "1")
    assert registry.alias_version("fineflow-registry-test", "production") == "1"
    tracking.end_run(run, "FINISHED")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{net.free_port()}")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(MlflowException):
        registry.alias_version("fineflow-registry-test", "production")
