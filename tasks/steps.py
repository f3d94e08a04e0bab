"""One Prefect task per pipeline step; each returns a small typed value and times itself into MLflow.

Steps never name a framework or an engine: they call the backend interfaces
(``tasks/finetune/base.py``, ``tasks/deploy/base.py``) of what the config chose.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks import envs, launchers, storage, tracking
from tasks.config import DeploySection, EvaluateSection, PipelineConfig
from tasks.data import DatasetError, PreparedDataset, prepare, read_jsonl
from tasks.deploy import endpoints, keys, rollout
from tasks.deploy.keys import LOOPBACK
from tasks.deploy.endpoints import Endpoint
from tasks.evaluate import EvalReport, evaluate, metrics_of
from tasks.finetune import LazyLLMFinetuneBase, get_framework
from tasks.finetune.auto import plan_dict
from tasks.formatter import make_formatter
from tasks.merge import check_weights_moved
from tasks.models import ModelManager, ModelNotFoundError, ModelRef
from tasks.settings import Settings


class TrainResult(BaseModel):
    framework: str
    target_path: str
    steps: int
    final_loss: float | None
    tokens_per_second: float | None = None
    prompt_style: str  # how the trained model is prompted (tasks.inference), for evaluation and serving
    model_type: str = "llm"  # what it is (llm, embed, rerank): how it is evaluated
    log_path: str


class MergedModel(BaseModel):
    path: str
    weight_delta: float
    s3_uri: str


@contextmanager
def timed(run_id: str, step: str):
    """Time a step into MLflow; a step that fails leaves its name and error on the run (``failed_step``)."""
    start = time.monotonic()
    try:
        yield
    except BaseException as e:
        for key, value in (("failed_step", step), ("error", f"{type(e).__name__}: {e}"[:1000])):
            tracking.set_tag(run_id, key, value)  # masked
        raise
    tracking.log_metrics(run_id, {f"duration_{step}_s": time.monotonic() - start})


def workdir(run_id: str) -> Path:
    path = Settings.load().home / "runs" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


@task(retries=2, retry_delay_seconds=2)
def download(base_model: str, run_id: str) -> ModelRef:
    """The base model as a local directory with weights: found under the search roots or the cache, or
    downloaded by ``ModelManager`` from ``LAZYLLM_MODEL_SOURCE`` (a hub or an S3 mirror)."""
    with timed(run_id, "download"):
        manager = ModelManager()
        path = manager.download(base_model)
        if not path:
            raise ModelNotFoundError(f"model {base_model!r} is neither local (model_path, {manager.cache_dir}, "
                                     f"infra/models) nor downloadable from {manager.model_source}; see the log above")
        ref = ModelRef(name=Path(base_model).name, path=path)
    get_run_logger().info("base model %s at %s", ref.name, ref.path)
    return ref


def make_trainer(config: PipelineConfig, base_path: str, run_id: str, **launcher_kw) -> LazyLLMFinetuneBase:
    """The configured framework's component, training into this run's working directory. The data section's
    split size and prompt template reach a framework that takes them."""
    section = config.finetune
    cls = get_framework(section.framework)
    from_data = {"val_set_size": config.data.val_set_size, "prompt_template_name": config.data.prompt_template_name}
    params = {**{k: v for k, v in from_data.items() if k in cls.Params.model_fields},
              **section.params.model_dump(exclude_unset=True)}
    launcher = launchers.remote(ngpus=section.nproc, **launcher_kw)
    return cls(base_path, str(workdir(run_id) / "finetune"), launcher=launcher, **params)


@task
def prepare_dataset(config: PipelineConfig, base: ModelRef, run_id: str) -> PreparedDataset:
    """Validate every record, dedupe, check lengths against the framework's cutoff_len, split, render prompts,
    and store the result in S3 under its content hash. Records the framework cannot train on fail here."""
    d = config.data
    trainer = make_trainer(config, base.path, run_id)
    trainer.preflight()  # a framework that cannot run here says so before any work
    with timed(run_id, "prepare"):
        prepared = prepare(d.path, workdir(run_id) / "data", d.val_set_size, d.prompt_template_name, d.seed,
                           format=None, cutoff_len=trainer.cutoff_len, tokenizer_path=base.path, on_long=d.on_long,
                           max_record_chars=d.max_record_chars)
        if prepared.format not in trainer.formats():
            raise DatasetError(d.path, None, None, f"{config.finetune.framework} ({type(trainer).__name__}) trains "
                                                   f"on {' or '.join(trainer.formats())} records, not "
                                                   f"{prepared.format} records")
        prepared.uri = f"s3://{Settings.load().s3_bucket}/datasets/{prepared.hash}"
        if not storage.exists(f"{prepared.uri}/manifest.json"):
            storage.upload_dir(Path(prepared.train_path).parent, prepared.uri)
    tracking.log_params(run_id, {"dataset.hash": prepared.hash, "dataset.uri": prepared.uri,
                                 "dataset.source": prepared.source, "dataset.source_sha256": prepared.source_sha256,
                                 "dataset.format": prepared.format, "dataset.n_train": prepared.n_train,
                                 "dataset.n_val": prepared.n_val, "dataset.n_duplicates": prepared.n_duplicates,
                                 "dataset.n_too_long": prepared.n_too_long})
    get_run_logger().info("dataset %s: %d train / %d val %s records -> %s", prepared.hash[:12], prepared.n_train,
                          prepared.n_val, prepared.format, prepared.uri)
    return prepared


@task
def finetune(config: PipelineConfig, base: ModelRef, data: PreparedDataset, run_id: str) -> TrainResult:
    """Train with the configured framework, in its own environment, as a subprocess; loss by step reaches MLflow
    while it runs (from its stdout or the metrics file it writes)."""
    logger = get_run_logger()
    log_path = workdir(run_id) / "train.log"
    history: list[dict] = []

    def on_line(line: str) -> None:
        metric = trainer.parse_metrics(line)
        if metric is None:
            return
        history.append(metric)
        values = {k: v for k, v in metric.items() if k not in ("step", "epoch")}
        # Trainer's end-of-training summary reuses the name train_loss for the mean; keep it apart.
        names = {k: "train_loss" if k == "loss" else f"summary_{k}" if k.startswith("train_") else k for k in values}
        tracking.log_metrics(run_id, {names[k]: v for k, v in values.items()}, step=metric["step"])
        logger.info("step %s %s", metric["step"], json.dumps(values))

    trainer = make_trainer(config, base.path, run_id, log_path=log_path, on_line=on_line)
    tracking.set_tag(run_id, "prompt_style", trainer.prompt_style())
    if plan := plan_dict(trainer):  # AutoFinetune chose the framework: record what and why
        tracking.log_params(run_id, {f"auto.{k}": v for k, v in plan.items() if k != "reason"})
        tracking.set_tag(run_id, "auto_reason", plan["reason"][:5000])
        logger.info("AutoFinetune: %s", plan["reason"])
    envs.ensure(trainer.environment, log=logger.info)
    trainset, valset = trainer.prepare_data(data.train_path, data.val_path, data.format,
                                            workdir(run_id) / "framework-data")
    command = trainer.train_command(trainset, valset)
    logger.info("running %s", command)
    try:
        with timed(run_id, "finetune"), launchers.follow(trainer.metrics_file(), on_line):
            trainer.launcher.launch(command, name="finetune")
    finally:
        if log_path.exists():
            tracking.log_artifact(run_id, log_path, "logs")  # a failed run's log reaches MLflow too
        if history:  # and the step it reached
            tracking.set_tag(run_id, "last_train_step", str(max(h["step"] for h in history)))
    tracking.loss_plot(run_id, history)
    losses = [h["loss"] for h in history if "loss" in h]
    speeds = [h["tokens_per_second"] for h in history if "tokens_per_second" in h]
    return TrainResult(framework=config.finetune.framework, target_path=trainer.target_path,
                       steps=max((h["step"] for h in history), default=0), final_loss=losses[-1] if losses else None,
                       tokens_per_second=speeds[-1] if speeds else None, prompt_style=trainer.prompt_style(),
                       model_type=trainer.model_type, log_path=str(log_path))


@task
def merge(config: PipelineConfig, base: ModelRef, trained: TrainResult, run_id: str) -> MergedModel:
    """Run the framework's export (merge the LoRA adapter, or copy a full finetune), check the weights moved,
    and upload the model through MLflow to S3."""
    trainer = make_trainer(config, base.path, run_id, log_path=trained.log_path)
    with timed(run_id, "merge"):
        export = trainer.export_command()
        if export is not None:
            get_run_logger().info("running %s", export)
            trainer.launcher.launch(export, name="merge")
        delta = check_weights_moved(base.path, trainer.output_path)
        tracking.log_artifacts(run_id, trainer.output_path, "merged_model")
    tracking.log_metrics(run_id, {"merge_max_weight_delta": delta})
    return MergedModel(path=trainer.output_path, weight_delta=delta,
                       s3_uri=tracking.artifact_s3_uri(run_id, "merged_model"))


@task
def evaluate_models(cfg: EvaluateSection, base: ModelRef, merged: MergedModel, trained: TrainResult,
                    data: PreparedDataset, run_id: str) -> EvalReport:
    """Base and candidate scored by the model type's evaluator on the validation split (an LLM: loss, perplexity
    and greedy exact-match, prompted the way the candidate was trained; an embedder or reranker: recall@k, MRR@10,
    nDCG@10); apply the gate."""
    records = read_jsonl(data.val_path)[: cfg.max_samples]
    with timed(run_id, "evaluate"):
        report = evaluate(base.path, merged.path, records, cfg.gate, trained.prompt_style, cfg.max_new_tokens,
                          model_type=trained.model_type, all_records=read_jsonl(data.train_path))
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
    engine.preflight()  # an engine that cannot start here says so at once
    if cfg.host not in LOOPBACK:  # the config has checked the key is on
        logger.warning("the endpoint binds %s: reachable from other machines, every request needs the API key "
                       "(%s)", cfg.host, keys.key_path())
    command = engine.cmd(merged.path)
    headers = {}
    if cfg.api_key:
        command, headers = engine.with_api_key(command, keys.api_key()), keys.auth_headers()
    with timed(run_id, "deploy"):
        try:
            ep = endpoints.start(f"{name}-{run_id[:8]}", command, engine.engine, merged.path,
                                 api_key_file=str(keys.key_path()) if cfg.api_key else None)
        finally:
            engine.after_start()
        try:
            answer, shown = engine.smoke_test(ep.url, read_jsonl(data.val_path)[:8], headers, merged.path,
                                              prompt_style=trained.prompt_style,
                                              formatter=make_formatter(cfg.formatter, cfg.formatter_selector))
        except Exception:
            endpoints.stop(ep.name)  # a candidate that fails its smoke test is not left running
            raise
    ep.relaunch = {"deploy": cfg.model_dump(mode="json"), "prompt_style": trained.prompt_style}
    tracking.set_tag(run_id, "smoke_answer", str(answer)[:250])
    logger.info("endpoint %s serving at %s", ep.name, ep.url)
    logger.info("smoke test: %s", shown)
    return ep
