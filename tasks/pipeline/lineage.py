"""What a registered version serves and everything that produced it, from what the pipeline recorded.

    python -m tasks.pipeline.lineage fineflow-quickstart@production     # the version an alias holds
    python -m tasks.pipeline.lineage fineflow-quickstart/3               # a version
    python -m tasks.pipeline.lineage fineflow-quickstart --json          # production, as JSON

Every field comes from the registry (the version's tags and source), the MLflow run that registered it (tags,
params, metric history, ``config/pipeline.json``) and the Prefect flow run that ran it; nothing is inferred.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from tasks.pipeline.report import STEPS
from tasks.services import tracking


class StepRecord(BaseModel):
    step: str
    started: datetime | None = None
    ended: datetime | None = None
    seconds: float | None = None
    reused: bool = False  # skipped: the work was found done (cache_hit.<step>)


class Lineage(BaseModel):
    model_name: str
    version: str
    alias: str | None
    status: str  # serving under the alias, replaced, rejected, rolled back
    endpoint_url: str
    engine: str
    mlflow_model_uri: str  # the version's source (models:/m-...)
    model_files: str  # the checkpoint in the bucket
    mlflow_run_id: str
    mlflow_run_url: str
    prefect_flow_run_id: str
    prefect_flow_run_name: str | None
    prefect_flow_run_state: str | None
    dataset_uri: str
    dataset_hash: str
    dataset_source: str
    dataset_source_sha256: str
    dataset_format: str
    dataset_feedback: str = ""  # "production feedback of version N: M records" when built from it
    n_train: int
    n_val: int
    base_model: str
    base_model_revision: str
    code_commit: str
    code_dirty: str
    code_version: str
    config: dict
    metrics: dict[str, float]  # base_* and candidate_* as the version records them
    gate: str
    promoted: bool
    steps: list[StepRecord]


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS``, ``NAME/VERSION`` or ``NAME`` (``production``) -> (name, alias, version)."""
    if m := re.fullmatch(r"(.+)@([A-Za-z0-9_-]+)", ref):
        return m[1], m[2], None
    if m := re.fullmatch(r"(.+)/(\d+)", ref):
        return m[1], None, m[2]
    return ref, "production", None


def _ms(ts: int | None) -> datetime | None:
    return datetime.fromtimestamp(ts / 1000, tz=timezone.utc) if ts else None


def _flow_run(flow_run_id: str) -> tuple[str | None, str | None]:
    from uuid import UUID

    if flow_run_id in ("", "local"):
        return None, None
    from prefect.client.orchestration import get_client

    from tasks.services.coordination import prefect_api

    with prefect_api(), get_client(sync_client=True) as prefect:
        run = prefect.read_flow_run(UUID(flow_run_id))
    return run.name, run.state.name if run.state else None


def step_records(run_id: str, tags: dict[str, str]) -> list[StepRecord]:
    """When each step ran: its ``duration_<step>_s`` metric is logged as it ends."""
    c, out = tracking.client(), []
    for step in STEPS:
        history = c.get_metric_history(run_id, f"duration_{step}_s")
        reused = tags.get(f"cache_hit.{step}") == "true" or (step == "finetune" and tags.get("cache_hit") == "true")
        if not history:
            out.append(StepRecord(step=step, reused=reused))
            continue
        last = history[-1]
        ended = _ms(last.timestamp)
        started = datetime.fromtimestamp(last.timestamp / 1000 - last.value, tz=timezone.utc)
        out.append(StepRecord(step=step, started=started, ended=ended, seconds=round(last.value, 2), reused=reused))
    return out


def lineage(ref: str) -> Lineage:
    """The lineage of ``NAME@ALIAS`` / ``NAME/VERSION`` (see the module's docstring)."""
    c = tracking.client()
    name, alias, version = parse_ref(ref)
    mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    tags = dict(mv.tags)
    run = c.get_run(mv.run_id)
    rtags, params = run.data.tags, run.data.params
    with tempfile.TemporaryDirectory() as tmp:
        config = json.loads(Path(c.download_artifacts(mv.run_id, "config/pipeline.json", tmp)).read_text())
    flow_run_id = tags.get("prefect_flow_run_id") or rtags.get("prefect_flow_run_id", "")
    flow_name, flow_state = _flow_run(flow_run_id)
    serving = [a for a in (getattr(mv, "aliases", None) or [])]
    status = f"serving as {', '.join(serving)}" if serving else tags.get("status", "replaced")
    metrics = {k: float(v) for k, v in tags.items()
               if re.fullmatch(r"(base|candidate)_\w+", k) and re.fullmatch(r"-?[\d.]+(e-?\d+)?|nan|inf", v)}
    return Lineage(
        model_name=name, version=str(mv.version), alias=alias, status=status,
        endpoint_url=tags.get("endpoint_url", ""), engine=tags.get("backend", ""),
        mlflow_model_uri=mv.source, model_files=tags.get("model_files", mv.source),
        mlflow_run_id=mv.run_id, mlflow_run_url=tracking.run_url(mv.run_id),
        prefect_flow_run_id=flow_run_id, prefect_flow_run_name=flow_name, prefect_flow_run_state=flow_state,
        dataset_uri=params.get("dataset.uri", ""), dataset_hash=tags.get("dataset_hash", ""),
        dataset_source=params.get("dataset.source", ""), dataset_source_sha256=tags.get("dataset_file_hash", ""),
        dataset_format=params.get("dataset.format", ""), dataset_feedback=rtags.get("dataset_feedback", ""),
        n_train=int(params.get("dataset.n_train", 0)),
        n_val=int(params.get("dataset.n_val", 0)),
        base_model=rtags.get("base_model", ""), base_model_revision=rtags.get("base_model_revision", "unrecorded"),
        code_commit=rtags.get("code_commit", "unrecorded"), code_dirty=rtags.get("code_dirty", "unrecorded"),
        code_version=rtags.get("code_version", "unrecorded"), config=config, metrics=metrics,
        gate=tags.get("gate", ""), promoted=tags.get("status") not in ("rejected", "pending"),
        steps=step_records(mv.run_id, rtags))


def render(info: Lineage) -> str:
    rows = [
        ("model", f"{info.model_name} version {info.version}" + (f" (@{info.alias})" if info.alias else "")),
        ("status", info.status), ("endpoint", f"{info.endpoint_url} ({info.engine})"),
        ("mlflow model", f"{info.mlflow_model_uri}  files: {info.model_files}"),
        ("mlflow run", f"{info.mlflow_run_id}  {info.mlflow_run_url}"),
        ("prefect flow run", f"{info.prefect_flow_run_id} {info.prefect_flow_run_name or ''} "
                             f"({info.prefect_flow_run_state or 'not found'})"),
        ("dataset", f"{info.dataset_uri}  hash {info.dataset_hash}"),
        ("dataset rows", f"{info.n_train} train / {info.n_val} validation ({info.dataset_format})"),
        ("dataset source", f"{info.dataset_source}  sha256 {info.dataset_source_sha256}"),
        *([("trained on", info.dataset_feedback)] if info.dataset_feedback else []),
        ("base model", f"{info.base_model}  revision {info.base_model_revision}"),
        ("code", f"commit {info.code_commit} (dirty: {info.code_dirty}), recipe code version {info.code_version}"),
        ("gate", f"{'promoted' if info.promoted else 'not promoted'}: {info.gate}"),
        ("metrics", "  ".join(f"{k}={v:.4f}" for k, v in sorted(info.metrics.items()))),
    ]
    for s in info.steps:
        when = (f"{s.started:%Y-%m-%d %H:%M:%S} -> {s.ended:%H:%M:%S} UTC ({s.seconds:.1f} s)" if s.started
                else "not run")
        rows.append((f"step {s.step}", when + ("  [reused: done before]" if s.reused else "")))
    rows.append(("config", json.dumps(info.config, sort_keys=True)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tasks.pipeline.lineage", description=__doc__.split("\n")[0])
    parser.add_argument("ref", help="NAME@ALIAS, NAME/VERSION or NAME (its production version)")
    parser.add_argument("--json", action="store_true", help="print the lineage as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    info = lineage(args.ref)
    print(info.model_dump_json(indent=1) if args.json else render(info))


if __name__ == "__main__":
    main(sys.argv[1:])
