"""One Prefect task per pipeline step up to the candidate model (download, prepare, finetune, merge); each returns
a small typed value and times itself into MLflow. Evaluation, deployment and registration are in ``promote.py``.

Steps never name a framework or an engine: they call the backend interfaces (``tasks/finetune/base.py``,
``tasks/deploy/base.py``) of what the config chose. A step is given values (the config, paths), so a step that
runs the framework builds its component from the config, with ``make_trainer``: the one way to build it.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks import envs
from tasks.data import DatasetError, PreparedDataset, prepare
from tasks.data.readers import source_sha256
from tasks.finetune import LazyLLMFinetuneBase, get_framework, nodes
from tasks.finetune.merge import check_weights_moved
from tasks.models import ModelManager, ModelNotFoundError, ModelRef
from tasks.models.local import revision_of
from tasks.pipeline import feedback
from tasks.pipeline.config import PipelineConfig
from tasks.pipeline.run import record_choice, timed, workdir
from tasks.services import cache, checkpoints, coordination, mlflow_model, storage, tracking
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
    run_id: str = ""  # the MLflow run that trained it (another run's when this one reused it)


class MergedModel(BaseModel):
    path: str  # the merged checkpoint on this machine
    weight_delta: float
    s3_uri: str  # the same files in the bucket (inside the MLflow model)
    model_uri: str = ""  # the MLflow logged model (models:/m-...): what a registered version's source names


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
    revision = revision_of(path)
    tracking.set_tags(run_id, {"base_model_path": path, "base_model_revision": revision})
    get_run_logger().info("base model %s at %s (%s)", ref.name, ref.path, revision)
    return ref


def make_trainer(config: PipelineConfig, base_path: str, where: Path, across_nodes: bool = False,
                 **launcher_kw) -> LazyLLMFinetuneBase:
    """The configured framework's component, training into ``where/finetune``. The data section's split size
    and prompt template reach a framework that takes them. ``across_nodes``: its launcher runs the training on
    the section's ``nodes`` (one machine when that is 1); every other command runs here."""
    section = config.finetune
    cls = get_framework(section.framework)
    from_data = {"val_set_size": config.data.val_set_size, "prompt_template_name": config.data.prompt_template_name}
    params = {**{k: v for k, v in from_data.items() if k in cls.Params.model_fields},
              **section.params.model_dump(exclude_unset=True)}
    launcher = nodes.launcher_for(section.nodes if across_nodes else 1, section.cluster, str(where / "finetune"),
                                  ngpus=section.nproc, **launcher_kw)
    return cls(base_path, str(where / "finetune"), launcher=launcher, **params)


@task
def prepare_dataset(config: PipelineConfig, base: ModelRef, run_id: str, force: bool = False) -> PreparedDataset:
    """Validate every record, dedupe, check lengths against the framework's cutoff_len, split, render prompts,
    and store the result in S3 under its content hash. Records the framework cannot train on fail here. The
    same file prepared the same way before (``cache``, keyed by its sha256) is not prepared again."""
    d, logger = config.data, get_run_logger()
    trainer = make_trainer(config, base.path, workdir(run_id))
    trainer.preflight()  # a framework that cannot run here says so before any work
    with timed(run_id, "prepare"):
        prep_key = cache.key(source=source_sha256(d.path), data=d.model_dump(mode="json", exclude={"path"}),
                             cutoff_len=trainer.cutoff_len, formats=trainer.formats(),
                             base=cache.fingerprint(base.path), code=cache.code_version())
        if hit := None if force else cache.get("prepare", prep_key):
            prepared = PreparedDataset(**hit)
            if not Path(prepared.train_path).is_file():  # prepared on another worker: the files are in the bucket
                local = storage.fetch(prepared.uri, workdir(run_id) / "data" / prepared.hash[:16])
                prepared.train_path, prepared.val_path = str(local / "train.jsonl"), str(local / "val.jsonl")
            tracking.set_tag(run_id, "cache_hit.prepare", "true")
            logger.info("unchanged: %s was prepared before (dataset %s); not prepared again", d.path,
                        prepared.hash[:12])
        else:
            prepared = prepare(d.path, workdir(run_id) / "data", d.val_set_size, d.prompt_template_name, d.seed,
                               format=None, cutoff_len=trainer.cutoff_len, tokenizer_path=base.path,
                               on_long=d.on_long, max_record_chars=d.max_record_chars)
            if prepared.format not in trainer.formats():
                raise DatasetError(d.path, None, None, f"{config.finetune.framework} ({type(trainer).__name__}) "
                                   f"trains on {' or '.join(trainer.formats())} records, not {prepared.format} records")
            prepared.uri = f"s3://{Settings.load().s3_bucket}/datasets/{prepared.hash}"
            if not storage.exists(f"{prepared.uri}/manifest.json"):
                storage.upload_dir(Path(prepared.train_path).parent, prepared.uri)
            cache.put("prepare", prep_key, prepared.model_dump(mode="json"))
    tracking.log_params(run_id, {"dataset.hash": prepared.hash, "dataset.uri": prepared.uri,
                                 "dataset.source": prepared.source, "dataset.source_sha256": prepared.source_sha256,
                                 "dataset.format": prepared.format, "dataset.n_train": prepared.n_train,
                                 "dataset.n_val": prepared.n_val, "dataset.n_duplicates": prepared.n_duplicates,
                                 "dataset.n_too_long": prepared.n_too_long})
    log_dataset_inputs(run_id, prepared)
    if card := feedback.card_of(str(d.path)):  # built from production feedback: lineage names it
        tracking.set_tag(run_id, "dataset_feedback", feedback.described(card))
    logger.info("dataset %s: %d train / %d val %s records -> %s", prepared.hash[:12], prepared.n_train,
                prepared.n_val, prepared.format, prepared.uri)
    return prepared


def log_dataset_inputs(run_id: str, prepared: PreparedDataset) -> None:
    """The train and validation splits as the run's MLflow inputs: their files in the bucket, each file's sha256 as
    the digest, row counts and format; the prepared set's hash and the source file's beside them."""
    for context, path, rows in (("training", prepared.train_path, prepared.n_train),
                                ("validation", prepared.val_path, prepared.n_val)):
        digest = source_sha256(path)
        tracking.log_dataset(run_id, f"{Path(prepared.source).stem}-{context}", f"{prepared.uri}/{Path(path).name}",
                             digest, context,
                             profile={"num_rows": rows, "format": prepared.format, "sha256": digest,
                                      "dataset_hash": prepared.hash, "source": prepared.source,
                                      "source_sha256": prepared.source_sha256})


@task
def candidate_hash(config: PipelineConfig, base: ModelRef, data: PreparedDataset, run_id: str) -> str:
    """What the candidate model depends on, hashed (``cache.key``): the base model's content, the dataset, the
    framework with the parameters the config gave it, and the recipe's code. Training works in the directory of
    this key, and the trained and merged candidate is recorded under it."""
    section = config.finetune
    key = cache.key(base=cache.fingerprint(base.path), data=data.hash, framework=section.framework,
                    params=section.params.model_dump(mode="json", exclude_unset=True), nproc=section.nproc,
                    code=cache.code_version(), **({"nodes": section.nodes} if section.nodes > 1 else {}))
    tracking.set_tag(run_id, "candidate_hash", key)
    return key


@task
def finetune(config: PipelineConfig, base: ModelRef, data: PreparedDataset, key: str, run_id: str,
             force: bool = False) -> TrainResult:
    """Train with the configured framework, in its own environment, as a subprocess; loss by step reaches MLflow
    while it runs (from its stdout or the metrics file it writes). Training works in the directory of ``key``:
    a run after a crash resumes from its last complete checkpoint; a candidate already trained and merged for
    ``key`` is not trained again (``force`` trains from scratch)."""
    logger, where = get_run_logger(), train_dir(key, run_id, force)
    with coordination.slot("train", key, log=get_run_logger().info):
        if hit := None if force else cache.get("candidate", key):
            logger.info("unchanged: candidate %s was trained by run %s; not trained again", key, hit["run_id"])
            trained = TrainResult(**hit["trained"])
            tracking.set_tags(run_id, {"cache_hit": "true", "prompt_style": trained.prompt_style,
                                       "trained_by_run": trained.run_id or hit["run_id"]})
            return trained
        tracking.set_tag(run_id, "cache_hit", "false")
        done = where / "trained.json"  # training finished here, but the run died before the candidate was recorded
        if done.is_file() and not force:
            logger.info("training of candidate %s finished before (%s); not trained again", key, done)
            trained = TrainResult.model_validate_json(done.read_text())
            tracking.set_tag(run_id, "prompt_style", trained.prompt_style)
            return trained
        trained = train(config, base, data, where, run_id, None if force else checkpoints_uri(key))
        done.write_text(trained.model_dump_json())
        return trained


def train_dir(key: str, run_id: str, force: bool) -> Path:
    """Where the candidate is trained and merged: the directory of its key, shared by every run of the same inputs
    (so a run after a crash resumes there), or, with ``force``, one of the run's own."""
    return workdir(run_id) / "train" if force else cache.workdir(key)


def checkpoints_uri(key: str) -> str:
    return f"s3://{Settings.load().s3_bucket}/checkpoints/{key}"


def train(config: PipelineConfig, base: ModelRef, data: PreparedDataset, where: Path, run_id: str,
          mirror_uri: str | None) -> TrainResult:
    """Run the framework's training command in ``where``; with ``mirror_uri``, its complete checkpoints are
    mirrored there while it runs, and the newest is fetched from there first when ``where`` has none."""
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

    trainer = make_trainer(config, base.path, where, across_nodes=True, log_path=log_path, on_line=on_line,
                           log=logger.info)
    tracking.set_tag(run_id, "prompt_style", trainer.prompt_style())
    record_choice(run_id, trainer, "AutoFinetune", "auto", logger.info)
    envs.ensure(trainer.environment, log=logger.info)
    trainset, valset = trainer.prepare_data(data.train_path, data.val_path, data.format,
                                            where / "framework-data")
    target = Path(trainer.target_path)
    if mirror_uri:  # before the command: a framework that resumes names the checkpoint in it
        checkpoints.restore(target, mirror_uri, logger.info)
    command = trainer.train_command(trainset, valset)
    logger.info("running %s", command)
    mirror_here = mirror_uri and not trainer.launcher.mirrors_checkpoints(target, mirror_uri)
    try:
        with timed(run_id, "finetune"), trainer.launcher.following(trainer.metrics_file(), on_line), \
                checkpoints.mirror(target, mirror_uri, logger.info) if mirror_here else nullcontext():
            trainer.launcher.launch(command, name="finetune")
    finally:
        if log_path.exists():
            tracking.log_artifact(run_id, log_path, "logs")  # a failed run's log reaches MLflow too
        if history:  # and the step it reached
            tracking.set_tag(run_id, "last_train_step", str(max(h["step"] for h in history)))
    tracking.loss_plot(run_id, history)
    losses = [h["loss"] for h in history if "loss" in h]
    speeds = [h.get("tokens_per_second", h.get("train_tokens_per_second")) for h in history
              if "tokens_per_second" in h or "train_tokens_per_second" in h]
    return TrainResult(framework=config.finetune.framework, target_path=trainer.target_path,
                       steps=max((h["step"] for h in history), default=0), final_loss=losses[-1] if losses else None,
                       tokens_per_second=speeds[-1] if speeds else None, prompt_style=trainer.prompt_style(),
                       model_type=trainer.model_type, log_path=str(log_path), run_id=run_id)


@task
def merge(config: PipelineConfig, base: ModelRef, trained: TrainResult, key: str, run_id: str,
          force: bool = False) -> MergedModel:
    """Run the framework's export (merge the LoRA adapter, or copy a full finetune), check the weights moved,
    log it as an MLflow model (``mlflow_model``: through the tracking server into the bucket, verified), and
    record the candidate under ``key``. A candidate recorded before is taken as it is (fetched from the bucket
    when this worker lacks its files)."""
    with coordination.slot("train", key, log=get_run_logger().info):
        if hit := None if force else cache.get("candidate", key):
            merged = MergedModel(**hit["merged"])
            if not Path(merged.path).is_dir():
                merged.path = str(storage.fetch(merged.s3_uri, cache.workdir(key) / "merged"))
            tracking.set_tag(run_id, "cache_hit.merge", "true")
            get_run_logger().info("unchanged: candidate %s was merged by run %s (%s)", key, hit["run_id"],
                                  merged.s3_uri)
            return merged
        trainer = make_trainer(config, base.path, train_dir(key, run_id, force), log_path=workdir(run_id) / "train.log")
        with timed(run_id, "merge"):
            export = trainer.export_command()
            if export is not None:
                get_run_logger().info("running %s", export)
                trainer.launcher.launch(export, name="merge")
            delta = check_weights_moved(base.path, trainer.output_path)
            logged = mlflow_model.log_merged(run_id, trainer.output_path, trained.model_type,
                                             train_dir(key, run_id, force), log=get_run_logger().info)
        tracking.log_metrics(run_id, {"merge_max_weight_delta": delta})
        merged = MergedModel(path=trainer.output_path, weight_delta=delta, s3_uri=logged.files_uri,
                             model_uri=logged.uri)
        cache.put("candidate", key, {"run_id": run_id, "trained": trained.model_dump(mode="json"),
                                     "merged": merged.model_dump(mode="json")})
    return merged
