"""MLflow: one run per pipeline run, addressed by id (never the thread-local "active run").

Prefect may run tasks in worker threads, so every call names its ``run_id``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from tasks import net
from tasks.masking import redact, redact_text
from tasks.settings import Settings, environ


def client(settings: Settings | None = None) -> MlflowClient:
    settings = settings or Settings.load()
    settings.require("mlflow_uri")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # MLflow reads its login from here
        if value := settings.client_env().get(name):
            os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server does not answer: the run stops before it creates or trains anything."""


def require_server(attempts: int = 3, timeout_s: float = 3.0) -> None:
    """Fail within seconds, naming the tracking URI and what to start, when MLflow does not answer its health
    check (MLflow's own client retries a refused connection for minutes, silently)."""
    import time

    uri = Settings.load().mlflow_uri or ""
    if not uri.startswith(("http://", "https://")):
        return  # a local store (file:, sqlite:) or a managed service without /health
    for attempt in range(attempts):
        if (error := net.probe(f"{uri.rstrip('/')}/health", timeout_s)) is None:
            return
        if attempt < attempts - 1:
            time.sleep(1)
    raise TrackingUnavailable(f"the MLflow tracking server at {uri} does not answer ({redact_text(error)}): "
                              "start it (`make up` starts the local stack) or point MLFLOW_TRACKING_URI at a running "
                              "one; nothing was run")


def flatten(obj: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def start_run(experiment: str, run_name: str, tags: dict[str, str], params: dict) -> str:
    c = client()
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(experiment)
    run = c.create_run(exp_id, run_name=run_name, tags=redact(tags))
    log_params(run.info.run_id, params)
    return run.info.run_id


def log_params(run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in flatten(redact(params)).items()]
    for i in range(0, len(items), 100):
        client().log_batch(run_id, params=items[i:i + 100])


def set_tag(run_id: str, key: str, value: str) -> None:
    client().set_tag(run_id, key, redact({key: value})[key])


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in redact(tags).items()])


# The variables that decide where a run reads and writes and how it runs, recorded with every run.
RUN_ENVIRONMENT_PREFIXES = ("FINEFLOW_", "LAZYLLM_", "MLFLOW_", "PREFECT_API", "AWS_", "HF_", "HUGGING_FACE_",
                            "MODELSCOPE_", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")


def environment_record() -> str:
    """``NAME=value`` lines of the run's environment variables above, credentials masked."""
    chosen = {k: v for k, v in sorted(environ().items()) if k.startswith(RUN_ENVIRONMENT_PREFIXES)}
    return "".join(f"{k}={v}\n" for k, v in redact(chosen).items())


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client().log_batch(run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    client().log_text(run_id, redact_text(text), artifact_file)


def log_artifacts(run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
    client().log_artifacts(run_id, str(local_dir), artifact_path)


def log_artifact(run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
    client().log_artifact(run_id, str(local_path), artifact_path)


def loss_plot(run_id: str, history: list[dict[str, float]]) -> None:
    """Plot train (and eval) loss by step into ``plots/loss.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("loss", "eval_loss"):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), label=key, marker="." if key == "eval_loss" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "loss.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        log_artifact(run_id, path, "plots")


def log_dataset(run_id: str, name: str, uri: str, digest: str, context: str, profile: dict,
                schema: dict | None = None) -> None:
    """Record a dataset as an input of the run (the run page's "Datasets", ``search_runs``' ``dataset``): its
    source URI, a digest (MLflow keeps 36 characters), its row counts and format in ``profile``.

    Two runs logging the same dataset at once race inside the tracking server (it looks the dataset up, then
    inserts it: the second insert breaks a unique constraint). That is not the run's failure: the dataset is
    there by then, and logging again links it."""
    import json
    import time

    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    dataset = Dataset(name=name, digest=digest[:36], source_type="s3", source=json.dumps({"uri": uri}),
                      schema=json.dumps(schema) if schema else None, profile=json.dumps(profile))
    for attempt in range(3):
        try:
            client().log_inputs(run_id, [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])
            return
        except MlflowException as e:
            if "UNIQUE constraint failed" not in e.message or attempt == 2:
                raise
            time.sleep(0.5)


def end_run(run_id: str, status: str) -> None:
    client().set_terminated(run_id, status)


def run_url(run_id: str) -> str:
    c = client()
    run = c.get_run(run_id)
    return f"{Settings.load().mlflow_uri}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def s3_of(artifact_uri: str) -> str:
    """The bucket URI behind an artifact URI: ``mlflow-artifacts:/...`` (proxied by the tracking server) maps onto
    its ``--artifacts-destination``; an ``s3://`` URI is itself."""
    from urllib.parse import urlparse

    if not artifact_uri.startswith("mlflow-artifacts:"):
        return artifact_uri.rstrip("/")
    dest = Settings.load().mlflow_artifacts_uri
    if not dest:
        raise RuntimeError("FINEFLOW_MLFLOW_ARTIFACTS (the server's --artifacts-destination) is not set")
    return f"{dest.rstrip('/')}/{urlparse(artifact_uri).path.strip('/')}"


def close_crashed_runs(experiment: str | None = None) -> list[str]:
    """End FAILED the MLflow runs left RUNNING by flow runs that Prefect has since ended (a flow run whose process
    died with its worker is marked Crashed by the crash automation, ``infra/demo.py``): the run cannot say so
    itself. Returns the run ids closed."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    c = client()
    experiments = [c.get_experiment_by_name(experiment)] if experiment else c.search_experiments()
    ids = [e.experiment_id for e in experiments if e is not None]
    closed = []
    if not ids:
        return closed
    with get_client(sync_client=True) as prefect:
        for run in c.search_runs(ids, filter_string="attributes.status = 'RUNNING'"):
            flow_run_id = run.data.tags.get("prefect_flow_run_id", "local")
            if flow_run_id == "local":
                continue
            state = prefect.read_flow_run(UUID(flow_run_id)).state
            if state is not None and state.is_final():
                set_tag(run.info.run_id, "error", f"the flow run ended {state.name}: {state.message or ''}"[:1000])
                end_run(run.info.run_id, "FAILED")
                closed.append(run.info.run_id)
    return closed


def run_for_flow_run(flow_run_id: str):
    """The MLflow run that a Prefect flow run recorded (tagged ``prefect_flow_run_id``), or None."""
    c = client()
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()],
                         filter_string=f"tags.prefect_flow_run_id = '{flow_run_id}'")
    return runs[0] if runs else None
