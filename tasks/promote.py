"""The register step: the deployed endpoint becomes a model version, and the alias moves to it only when it
is healthy, passed the gate and, when another run promoted while this one ran, beats that version too.

Promotions of one model are serialized (``rollout.model_lock``); the endpoint the alias pointed to before is
stopped after the move, not before. A candidate that is not promoted is tagged ``status=rejected`` and its
endpoint stopped, so production keeps serving.
"""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks import registry, tracking
from tasks.config import PipelineConfig
from tasks.data import PreparedDataset
from tasks.deploy import endpoints, rollout
from tasks.deploy.endpoints import Endpoint
from tasks.evaluate import EvalReport, metrics_of
from tasks.masking import show_argv
from tasks.steps import MergedModel


class Registration(BaseModel):
    model_name: str
    version: str
    alias: str
    promoted: bool
    previous_version: str | None
    reason: str


@task
def register(config: PipelineConfig, ep: Endpoint, merged: MergedModel, report: EvalReport,
             data: PreparedDataset, run_id: str, flow_run_id: str, production_at_start: str | None = None
             ) -> Registration:
    """Register the endpoint as a model version; move the alias only if healthy, the gate passed and, when another
    run promoted while this one ran, the candidate beats that version too (``registry.unless_superseded``)."""
    name, alias = config.registry.model_name, config.registry.alias
    healthy = ep.healthy()
    tags = {"endpoint_url": ep.url, "endpoint_name": ep.name, "backend": ep.backend,
            "api_key_file": ep.api_key_file or "none (open, loopback only)",
            # How to serve this version again (rollback, make up): the deploy section and the prompt style.
            "deploy_config": json.dumps(ep.relaunch),
            "launch_command": show_argv(ep.argv), "health": "ok" if healthy else "failed",
            "framework": config.finetune.framework,
            "dataset_hash": data.hash, "dataset_file_hash": data.source_sha256 or "", "prefect_flow_run_id": flow_run_id, "gate": report.reason,
            "model_type": report.model_type,
            **{f"{who}_{k}": f"{v:.4f}" for who in ("base", "candidate")
               for k, v in metrics_of(getattr(report, who)).items()}}
    version = registry.create_version(name, merged.s3_uri, run_id, tags)
    logger = get_run_logger()
    previous, why_not = None, None if healthy else "health check failed"
    if not why_not and not report.passed:
        why_not = report.reason
    if not why_not:
        try:
            done = rollout.promote(name, alias, version, ep, host=config.deploy.host, log=logger.info,
                                   guard=registry.unless_superseded(
                                       name, production_at_start, report.gate, metrics_of(report.candidate)))
            previous = done.previous_version
        except rollout.Superseded as e:
            why_not = str(e)
    if why_not:
        previous = registry.alias_version(name, alias)  # what keeps serving
        reason = f"not promoted: {why_not}"
        registry.set_tag(name, version, "status", "rejected")
        endpoints.stop(ep.name)  # the production endpoint keeps serving
    else:
        reason = f"{alias} -> version {version} ({report.reason}), served at {done.url}"
    logger.info("model %s version %s: %s", name, version, reason)
    tracking.set_tag(run_id, "registered_version", version)
    return Registration(model_name=name, version=version, alias=alias, promoted=not why_not,
                        previous_version=previous, reason=reason)
