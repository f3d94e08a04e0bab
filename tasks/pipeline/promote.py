"""From candidate to production: evaluate against the base, deploy, register; the alias moves to the new version
only when it is healthy, passed the gate and, when another run promoted while this one ran, beats that version.

Promotions of one model are serialized (``tasks.serving.rollout``); the endpoint the alias pointed to before is
stopped after the move, not before. A candidate that is not promoted is tagged ``status=rejected`` and its
endpoint stopped, so production keeps serving (``registration.py``, shared with the deploy-only pipelines).
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task

from tasks.data import PreparedDataset, read_jsonl
from tasks.evaluate import EvalReport, evaluate, metrics_of
from tasks.formatter import make_formatter
from tasks.models import ModelRef
from tasks.pipeline import pending
from tasks.pipeline.adapter import AdapterModel
from tasks.pipeline.config import DeploySection, EvaluateSection, PipelineConfig
from tasks.pipeline.registration import Registration, register, unless_superseded
from tasks.pipeline.run import record_choice, record_smoke, timed
from tasks.pipeline.steps import MergedModel, TrainResult
from tasks.services import cache, registry, tracking
from tasks.serving import canary, platforms, rollout
from tasks.serving.canary import Verdict
from tasks.serving.endpoints import Endpoint
from tasks.serving.start import start_engine


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
                              model_type=trained.model_type, all_records=read_jsonl(data.train_path),
                              answer=cfg.answer)
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
    configured formatter (``tasks.serving.start``). Its answer is the run's tag ``smoke_answer``."""
    logger = get_run_logger()
    engine = cfg.engine(merged.path, name, trained.prompt_style)
    record_choice(run_id, engine, "AutoDeploy", "deploy_auto", logger.info)
    with timed(run_id, "deploy"):
        started = start_engine(engine, merged.path, f"{name}-{run_id[:8]}", api_key=cfg.api_key,
                               relaunch=cfg.relaunch(trained.prompt_style), model_uri=merged.s3_uri,
                               smoke_records=read_jsonl(data.val_path)[:8],
                               formatter=make_formatter(cfg.formatter, cfg.formatter_selector), log=logger.warning)
    record_smoke(run_id, started, logger.info)
    return started.endpoint


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
def shadow_canary(config: PipelineConfig, ep: Endpoint, report: EvalReport, run_id: str) -> Verdict | None:
    """With ``promotion.canary``, a candidate that passed the offline gate is judged on a share of production's
    live requests copied to it (clients keep production's answers); its figures go to MLflow. None: no canary
    (not configured, the gate failed, or nothing in production to compare with)."""
    cfg, name, alias, log = config.promotion.canary, config.registry.model_name, config.registry.alias, \
        get_run_logger().info
    if cfg is None or not report.passed:
        return None
    if registry.alias_version(name, alias) is None:
        log(f"canary: {name}@{alias} serves nothing yet; the offline gate decides")
        return None
    with timed(run_id, "canary"):
        try:
            verdict = canary.run(name, alias, ep, cfg, log=log)
        except Exception as e:  # the candidate is not promoted; the run goes on to record it
            verdict = Verdict(passed=False, reason=f"the canary could not run: {type(e).__name__}: {e}")
    tracking.log_metrics(run_id, verdict.figures)
    tracking.set_tags(run_id, verdict.tags())
    return verdict


def canary_refusal(verdict: Verdict | None, config: PipelineConfig) -> str | None:
    """Why the canary keeps the candidate from the alias, or None (``held`` says when the decision waits)."""
    if verdict is None or verdict.passed or (verdict.passed is None and config.promotion.canary.on_too_few != "reject"):
        return None
    return f"canary: {verdict.reason}"


def held(verdict: Verdict | None, config: PipelineConfig) -> bool:
    """Too few live requests copied to the candidate, and ``on_too_few: hold``: registered pending, decided at a
    later watch tick (``tasks.pipeline.pending``)."""
    return verdict is not None and verdict.passed is None and config.promotion.canary.on_too_few == "hold"


@task
def register_candidate(config: PipelineConfig, ep: Endpoint, served: MergedModel | AdapterModel, report: EvalReport,
                       data: PreparedDataset, run_id: str, flow_run_id: str, production_at_start: str | None = None,
                       key: str = "", verdict: Verdict | None = None) -> Registration:
    """Register the endpoint as a model version of what it serves (the merged model, or the adapter on its shared
    base); move the alias only if healthy, the gate and the canary (``verdict``) passed and, when another run
    promoted while this one ran, the candidate beats that version too (``unless_superseded``)."""
    name, alias = config.registry.model_name, config.registry.alias
    tags = {"model_files": served.s3_uri, "framework": config.finetune.framework, "dataset_hash": data.hash,
            "dataset_file_hash": data.source_sha256 or "", "prefect_flow_run_id": flow_run_id, "gate": report.reason,
            "model_type": report.model_type, "candidate_hash": key,
            "evaluation_hash": evaluation_hash(config.evaluate, key),
            **{f"{who}_{k}": f"{v:.4f}" for who in ("base", "candidate")
               for k, v in metrics_of(getattr(report, who)).items()},
            **(served.version_tags(ep) if isinstance(served, AdapterModel) else {}),
            **(verdict.tags() if verdict else {})}
    waits = report.passed and held(verdict, config)
    if waits:  # what the watch tick needs to decide it: production now is what its canary compares it with
        tags |= pending.held_tags(config.promotion.canary, alias, registry.alias_version(name, alias),
                                  time.time())
    guard = unless_superseded(name, production_at_start, report.gate, metrics_of(report.candidate))
    done = register(name, alias, ep, served.model_uri or served.s3_uri, tags, run_id,
                    why_not=report.reason if not report.passed else canary_refusal(verdict, config),
                    promoted_as=report.reason + (f"; canary {verdict.tags()['canary']}" if verdict else ""),
                    log=get_run_logger().info, guard=guard,
                    pending=f"{verdict.reason}; decided at the next watch tick" if waits else None)
    if waits and not done.pending:  # not kept after all (its endpoint failed its check): copies to it end
        platforms.of_endpoint(ep).mirror(name, alias, ep, None)
    return done
