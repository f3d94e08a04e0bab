"""Helpers for the tests that run on the real local stack (``tests/e2e``): deployments run through the worker, what
a run logged, the schedules a test turns off."""

from __future__ import annotations

import secrets
import sys
import tempfile
from pathlib import Path

# A real credential, generated per session, in the environment of the stack's worker and so of every pipeline run:
# tests/e2e/test_pipeline.py checks that it shows nowhere in MLflow, the registry or the logs.
RUN_SECRET = "hf_" + secrets.token_hex(16)


def run_deployment(deployment: str = "finetune/quickstart", parameters: dict | None = None, timeout_s: float = 1200):
    """Run a deployment through the worker and follow it: (flow run id, final state, its log as one text)."""
    from infra.demo import follow, start_deployment

    flow_run_id = start_deployment(deployment, parameters)
    logs: list[str] = []
    state = follow(flow_run_id, timeout_s=timeout_s, echo=logs.append)
    return flow_run_id, state, "\n".join(logs)


def train_log(run_id: str) -> str:
    """The training log a pipeline run logged to MLflow (``logs/train.log``): the trainer's own output."""
    from tasks.services import tracking

    with tempfile.TemporaryDirectory() as tmp:
        return Path(tracking.client().download_artifacts(run_id, "logs/train.log", tmp)).read_text()


def pause_schedules(deployment: str) -> list[dict]:
    """Turn off the schedules of ``deployment``; returns them as they were (interval, active)."""
    from prefect.client.orchestration import get_client

    from infra.demo import prefect_api

    with prefect_api(), get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        schedules = client.read_deployment_schedules(dep.id)
        for s in schedules:
            client.update_deployment_schedule(dep.id, s.id, active=False)
    return [{"interval": getattr(s.schedule, "interval", None), "active": s.active} for s in schedules]


def client_env(home: Path) -> dict[str, str]:
    """A client that knows only the tracking server and its login: no S3 endpoint or credentials, no fineflow
    state."""
    from tasks.settings import Settings

    home.mkdir(parents=True, exist_ok=True)
    tracking = {k: v for k, v in Settings.load().client_env().items() if k.startswith("MLFLOW_TRACKING_")}
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home), "HF_HUB_OFFLINE": "1",
            **tracking}
