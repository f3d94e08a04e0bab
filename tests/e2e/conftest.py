"""The real local stack, once per session: SeaweedFS, MLflow, a Prefect server and worker on free ports, under the
session's private state directory, with the deployments of ``prefect.yaml`` registered."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tasks.settings import Settings
from tests.support.stack import RUN_SECRET, pause_schedules

# The stack's address and logins this process's clients use (Prefect reads them from the environment).
LOGIN = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(scope="session")
def stack(fineflow_home):
    """The real stack: SeaweedFS, MLflow, Prefect server and worker, on free ports; stopped at the end.

    With ``FINEFLOW_TEST_STACK_HOME`` set, the tests use the stack already running under that state directory, as
    it is, and leave it running: ``bench/mutation.py`` starts one stack for the tests of every mutant."""
    from infra import stack as local_stack
    from infra.demo import register_deployments

    if shared := os.environ.get("FINEFLOW_TEST_STACK_HOME"):
        os.environ["FINEFLOW_HOME"] = shared
        info = json.loads((Path(shared) / "stack.json").read_text())
        os.environ.update({name: value for name, value in Settings.load().client_env().items() if name in LOGIN})
        yield info
        return
    os.environ["HF_TOKEN"] = RUN_SECRET
    info = local_stack.up("free")
    logins = {name: value for name, value in Settings.load().client_env().items() if name in LOGIN}
    os.environ.update(logins)
    register_deployments()
    # The watch flow's schedule is on after deploying; the tests run it themselves, when they mean to.
    info["watch_schedules"] = pause_schedules("watch/data")
    yield info
    local_stack.down()
    os.environ.pop("HF_TOKEN", None)
    for name in logins:
        os.environ.pop(name, None)
