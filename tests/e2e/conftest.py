"""The real local stack, once per session: SeaweedFS, MLflow, a Prefect server and worker on free ports, under the
session's private state directory, with the deployments of ``prefect.yaml`` registered."""

from __future__ import annotations

import os

import pytest

from tests.support.stack import RUN_SECRET, pause_schedules


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
    os.environ.pop("PREFECT_API_URL", None)
