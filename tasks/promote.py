"""From candidate to production: evaluate against the base, deploy, register; the alias moves to the new version
only when it is healthy, passed the gate and, when another run promoted while this one ran, beats that version.

Promotions of one model are serialized (``rollout.model_lock``); the endpoint the alias pointed to before is
stopped after the move, not before. A candidate that is not promoted is tagged ``status=rejected`` and its
endpoint stopped, so production keeps serving.
"""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks import cache, registry, tracking
from tasks.config import DeploySection, EvaluateSection, PipelineConfig
from tasks.data import PreparedDataset, read_jsonl
from tasks.deploy import endpoints, keys, rollout
from tasks.deploy.endpoints import Endpoint
from tasks.deploy.keys import LOOPBACK
from tasks.evaluate import EvalReport, evaluate, metrics_of
from tasks.finetune.auto import plan_dict
from tasks.formatter import make_formatter
from tasks.masking import show_argv
from tasks.models import ModelRef
from tasks.steps import MergedModel, TrainResult, timed


def evaluation_hash(cfg: EvaluateSection, key: str) -> str:
    """What an evaluation depends on: the candidate (its hash), the evaluate section (samples, gate) and the code."""
    return cache.key(candidate=key, evaluate=cfg.model_dump(mode="json"), code=cache.code_version())


@task
def evaluate_models(cfg: EvaluateSection, base: ModelRef, merged: MergedModel, trained: TrainResult,
                    data: PreparedDataset, key: str, run_id: str, force: bool = False) -> EvalReport:
    """Base and candidate scored by the model type's evaluator on the validation split (an LLM: loss, perplexity
    and greedy exact-match, prompted the way the candidate was trained; an embedder or reranker: recall@k, MRR@10,
    nDCG@10); apply the gate. The candidate of ``key`` evaluated the same way before is not evaluated again."""
    eval_key = evaluation_hash(cfg, key)
    with timed(run_id, "evaluate"):
        if hit := None if force else cache.get("eval", eval_key):
            report = EvalReport(**hit)
            tracking.set_tag(run_id, "cache_hit.evaluate", "true")
            get_run_logger().info("unchanged: candidate %s was evaluated before; not evaluated again", key)
        else:
            records = read_jsonl(data.val_path)[: cfg.max_samples]
            report = evaluate(base.path, merged.path, records, cfg.gate, trained.prompt_style, cfg.max_new_tokens,
                              model_type=trained.model_type, all_records=read_jsonl(data.train_path))
            cache.put("eval", eval_key, report.model_dump(mode="json"))
    for who in ("base", "candidate"):
        tracking.log_metrics(run_id, {f"{who}_{k}": v for k, v in metrics_of(getattr(report, who)).items()})
    tracking.log_text(run_id, report.model_dump_json(indent=1), "eval/report.json")
    get_run_logger().info("gate %s: %s", "passed" if report.passed else "FAILED", report.reason)
    return report


@task
def deploy(cfg: DeploySection, merged: MergedModel, name: str, trained: TrainResult, data: PreparedDataset,
           run_id: str) -> Endpoint:
    """Start the configured engine detached (it outlives the flow run), wait for its readiness probe, and
    smoke-test it with a validation record: the answer goes through the engine's ``extract_result`` and the
    configured formatter."""
    logger = get_run_logger()
    engine = rollout.make_engine(cfg, merged.path, name, trained.prompt_style)
    if plan := plan_dict(engine):  # AutoDeploy chose the engine: record what and why
        tracking.log_params(run_id, {f"deploy_auto.{k}": v for k, v in plan.items() if k != "reason"})
        tracking.set_tag(run_id, "deploy_auto_reason", plan["reason"][:5000])
        logger.info("AutoDeploy: %s", plan["reason"])
    ep, _ = start_checked(engine, cfg, merged.path, name, run_id, read_jsonl(data.val_path)[:8],
                          trained.prompt_style)
    return ep


def start_checked(engine, cfg: DeploySection, model_path: str, name: str, run_id: str, records: list[dict],
                  prompt_style: str) -> tuple[Endpoint, str]:
    """Start ``engine`` on ``model_path`` detached (behind the API key when ``cfg.api_key``), wait for it, and
    smoke-test it on ``records``: (endpoint, what the smoke test showed; its answer is the run's tag
    ``smoke_answer``). An engine that cannot start here says so before anything starts; one that fails its
    smoke test is stopped. The endpoint records how to start it again (``relaunch``)."""
    logger = get_run_logger()
    engine.preflight()  # an engine that cannot start here says so at once
    if cfg.host not in LOOPBACK:  # the config has checked the key is on
        logger.warning("the endpoint binds %s: reachable from other machines, every request needs the API key "
                       "(%s)", cfg.host, keys.key_path())
    command = engine.cmd(model_path)
    headers = {}
    if cfg.api_key:
        command, headers = engine.with_api_key(command, keys.api_key()), keys.auth_headers()
    with timed(run_id, "deploy"):
        try:
            ep = endpoints.start(f"{name}-{run_id[:8]}", command, engine.engine, model_path,
                                 api_key_file=str(keys.key_path()) if cfg.api_key else None)
        finally:
            engine.after_start()
        try:
            answer, shown = engine.smoke_test(ep.url, records, headers, model_path, prompt_style=prompt_style,
                                              formatter=make_formatter(cfg.formatter, cfg.formatter_selector))
        except Exception:
            endpoints.stop(ep.name)  # a candidate that fails its smoke test is not left running
            raise
    ep.relaunch = {"deploy": cfg.model_dump(mode="json"), "prompt_style": prompt_style}
    tracking.set_tag(run_id, "smoke_answer", str(answer)[:250])
    logger.info("endpoint %s serving at %s; smoke test: %s", ep.name, ep.url, shown)
    return ep, shown


class Registration(BaseModel):
    model_name: str
    version: str
    alias: str
    promoted: bool
    previous_version: str | None
    reason: str
    endpoint_url: str = ""  # where the version answers ("" when it does not serve)


@task
def reuse_registered(config: PipelineConfig, key: str, run_id: str) -> Registration | None:
    """The candidate of ``key``, evaluated as now, registered before (an unchanged re-run): nothing is deployed or
    registered again. If it holds the alias, its endpoint is re-checked (and started again from the registry when
    gone). None when no version of the model is this candidate judged this way (a new gate is a new decision)."""
    name, alias = config.registry.model_name, config.registry.alias
    judged = evaluation_hash(config.evaluate, key)
    mine = [v for v in registry.client().search_model_versions(f"name = '{name}'")
            if v.tags.get("candidate_hash") == key and v.tags.get("evaluation_hash") == judged]
    if not mine:
        return None
    version = max(mine, key=lambda v: int(v.version))
    current = registry.alias_version(name, alias)
    if version.version == current:
        ep = rollout.serving_endpoint(name, current, log=get_run_logger().info)
        reason = f"unchanged: {alias} is version {current}, this candidate; its endpoint {ep.url} answers"
    else:
        ep, reason = None, (f"unchanged: this candidate is version {version.version}, not {alias} "
                            f"({version.tags.get('status', 'replaced')}: {version.tags.get('gate', '')})")
    tracking.set_tags(run_id, {"cache_hit.register": "true", "registered_version": version.version})
    get_run_logger().info("model %s: %s; nothing registered", name, reason)
    return Registration(model_name=name, version=version.version, alias=alias, promoted=False,
                        previous_version=current, reason=reason, endpoint_url=ep.url if ep else "")


@task
def register(config: PipelineConfig, ep: Endpoint, merged: MergedModel, report: EvalReport,
             data: PreparedDataset, run_id: str, flow_run_id: str, production_at_start: str | None = None,
             key: str = "") -> Registration:
    """Register the endpoint as a model version; move the alias only if healthy, the gate passed and, when another
    run promoted while this one ran, the candidate beats that version too (``registry.unless_superseded``)."""
    name, alias = config.registry.model_name, config.registry.alias
    healthy = ep.healthy()
    tags = {"endpoint_url": ep.url, "model_files": merged.s3_uri, "endpoint_name": ep.name, "backend": ep.backend,
            "api_key_file": ep.api_key_file or "none (open, loopback only)",
            # How to serve this version again (rollback, make up): the deploy section and the prompt style.
            "deploy_config": json.dumps(ep.relaunch),
            "launch_command": show_argv(ep.argv), "health": "ok" if healthy else "failed",
            "framework": config.finetune.framework,
            "dataset_hash": data.hash, "dataset_file_hash": data.source_sha256 or "",
            "prefect_flow_run_id": flow_run_id, "gate": report.reason,
            "model_type": report.model_type, "candidate_hash": key,
            "evaluation_hash": evaluation_hash(config.evaluate, key),
            **{f"{who}_{k}": f"{v:.4f}" for who in ("base", "candidate")
               for k, v in metrics_of(getattr(report, who)).items()}}
    version = registry.create_version(name, merged.model_uri or merged.s3_uri, run_id, tags)
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
    promoted = "" if why_not else f"{alias} -> version {version} ({report.reason}), served at {done.url}"
    return settle(name, alias, version, ep, run_id, why_not, previous, promoted)


def settle(name: str, alias: str, version: str, ep: Endpoint, run_id: str, why_not: str | None,
           previous: str | None, promoted: str) -> Registration:
    """The end of a registration: a version that was not promoted (``why_not``) is tagged ``status=rejected`` and
    its endpoint stopped, so production keeps serving; ``promoted`` says what moved when it was."""
    if why_not:
        previous = registry.alias_version(name, alias)  # what keeps serving
        registry.set_tag(name, version, "status", "rejected")
        endpoints.stop(ep.name)
    reason = f"not promoted: {why_not}" if why_not else promoted
    get_run_logger().info("model %s version %s: %s", name, version, reason)
    tracking.set_tag(run_id, "registered_version", version)
    return Registration(model_name=name, version=version, alias=alias, promoted=not why_not,
                        previous_version=previous, reason=reason, endpoint_url=ep.url)
