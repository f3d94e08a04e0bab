"""What a pipeline run would do, worked out without doing it (the contract's "display mode").

    python -m flows.finetune deployments/quickstart.yaml --plan
    prefect deployment run finetune/quickstart --param plan=true

The config is validated, the base model located (or where it would be downloaded from), the dataset read and
prepared in a temporary folder (records, format, hash), and each step listed with its resolved parameters and
the exact commands it would run, secrets masked. Nothing is created: no MLflow run, no object in the bucket, no
training, no endpoint; the temporary folder is removed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel

from tasks import envs
from tasks.data import prepare
from tasks.data.readers import source_sha256
from tasks.masking import redact
from tasks.models import ModelManager, gguf
from tasks.models.local import holds_weights, revision_of, revision_record
from tasks.pipeline.config import PipelineConfig, load_config
from tasks.pipeline.config_files import with_data_path
from tasks.pipeline.steps import make_trainer
from tasks.services import keys
from tasks.serving import platforms

# What a canary with too few requests in its wait does, as a plan says it.
TOO_FEW = {"gate": "the gate decides", "reject": "rejected",
           "hold": "registered pending, decided at a later watch tick"}


class PlannedStep(BaseModel):
    step: str
    does: str
    params: dict = {}
    commands: list[str] = []  # shell-quoted for reading, secrets masked; run as argument lists


class Plan(BaseModel):
    config_path: str
    pipeline: str
    base_model: str
    base_model_path: str | None  # None: not on this machine, downloaded at run time
    dataset_source: str
    dataset_source_sha256: str
    dataset_format: str
    dataset_hash: str
    n_train: int
    n_val: int
    n_duplicates: int
    n_too_long: int
    steps: list[PlannedStep]


def deploy_plan(config: PipelineConfig, merged: str, base_path: str, prompt_style: str) -> PlannedStep:
    """The deploy step: the merged model on an endpoint of its own, or (``serve: adapter``) the adapter loaded on
    the base's shared endpoint, whose command is shown as it starts when none runs yet."""
    cfg, key = config.deploy, (f"; requests need the API key ({keys.key_path()})" if config.deploy.api_key else "")
    if cfg.serve == "merged":
        engine = cfg.engine(merged, config.registry.model_name, prompt_style)
        return PlannedStep(step="deploy", does=f"start {engine.engine} on {cfg.host}, smoke-test it{key}",
                           params=cfg.model_dump(mode="json"), commands=[str(engine.cmd(merged))])
    engine = cfg.engine(base_path, Path(config.model.base_model).name, prompt_style)
    revision = revision_of(base_path) if holds_weights(base_path) else "<the base's revision>"
    engine.with_adapters(cfg.max_adapters, revision, platforms.platform(cfg.serving).adapter_root())
    return PlannedStep(step="deploy", does=f"load the adapter on the shared {engine.engine} endpoint of "
                       f"{config.model.base_model} (started with this command when none runs), smoke-test it "
                       f"there{key}", params=cfg.model_dump(mode="json"), commands=[str(engine.cmd(base_path))])


def locate_base(name: str) -> tuple[str | None, str]:
    """Where the base model is (None if it would be downloaded) and what the download step would do."""
    manager = ModelManager()
    if source := gguf.gguf_source(name):
        target = gguf.converted(source, manager.cache_dir)
        if holds_weights(target):
            return str(target), f"use {target} ({revision_of(target)})"
        return None, f"convert {source} (GGUF) into {target}"
    found = manager.find_local(name)
    if found:
        known = revision_record(found).is_file()
        return found, f"use {found}" + (f" ({revision_of(found)})" if known else " (its content hash is recorded)")
    return None, f"download {name} from {manager.model_source} into {manager.cache_dir}"


def tokenizer_of(config: PipelineConfig) -> str | None:
    """Where a base model not yet on disk has its tokenizer already: a GGUF file holds it."""
    source = gguf.gguf_source(config.model.base_model)
    return str(source) if source else None


def plan(config_path: str, overrides: dict | None = None, data_path: str | None = None) -> Plan:
    """The plan of ``config_path`` (with ``overrides`` and ``data_path`` as the flow takes them)."""
    config: PipelineConfig = load_config(config_path, with_data_path(overrides, data_path))
    base_path, base_does = locate_base(config.model.base_model)
    d = config.data
    with tempfile.TemporaryDirectory(prefix="fineflow-plan-") as tmp:
        where = Path(tmp)
        trainer = make_trainer(config, base_path or str(where / "base-model"), where)
        trainer.preflight()
        prepared = prepare(d.path, where / "data", d.val_set_size, d.prompt_template_name, d.seed, format=None,
                           cutoff_len=trainer.cutoff_len, tokenizer_path=base_path or tokenizer_of(config),
                           on_long=d.on_long,
                           max_record_chars=d.max_record_chars)
        trainset, valset = trainer.prepare_data(prepared.train_path, prepared.val_path, prepared.format,
                                                where / "framework-data")
        train = trainer.train_command(trainset, valset)
        export = trainer.export_command()
        merged = str(where / "merged-model")
        deploy_step = deploy_plan(config, merged, base_path or str(where / "base-model"), trainer.prompt_style())
        env = trainer.environment
        steps = [
            PlannedStep(step="download", does=base_does),
            PlannedStep(step="prepare", does=f"validate, split and render {d.path} ({prepared.format}); store it in "
                        "the bucket under its hash", params=d.model_dump(mode="json")),
            PlannedStep(step="finetune", does=f"{config.finetune.framework} ({type(trainer).__name__}) in "
                        f"{'this interpreter' if env is None else f'environment {env}'}"
                        f"{'' if envs.is_built(env) else ' (built first)'}, {config.finetune.nproc} process(es)"
                        f"{across_nodes(config.finetune)}",
                        params=config.finetune.params.model_dump(mode="json", exclude_unset=True),
                        commands=[str(train)]),
            PlannedStep(step="merge", does="export the trained model, check its weights moved, log it as an MLflow "
                        "model", commands=[str(export)] if export else []),
            PlannedStep(step="evaluate", does=f"base vs candidate on up to {config.evaluate.max_samples} validation "
                        f"records; gate on {config.evaluate.gate.metric}",
                        params=config.evaluate.model_dump(mode="json")),
            deploy_step,
            *([PlannedStep(step="canary", does=f"copy {c.share:.0%} of {config.registry.model_name}@"
                           f"{config.registry.alias}'s live requests to the candidate until {c.min_requests} are "
                           f"answered (at most {c.max_wait_s:g}s); judge errors, p95 latency"
                           f"{', agreement' if c.min_agreement is not None else ''}; too few: {TOO_FEW[c.on_too_few]}",
                           params=c.model_dump(mode="json"))] if (c := config.promotion.canary) else []),
            PlannedStep(step="register", does=f"register a version of {config.registry.model_name}; move "
                        f"{config.registry.alias} to it if healthy"
                        f"{', the gate and the canary' if config.promotion.canary else ' and the gate'} passed"),
        ]
    # The temporary folder's paths stand for the run's own: say so rather than show paths that will not exist.
    for s in steps:
        s.commands = [c.replace(tmp, "$RUN_DIR") for c in s.commands]
        s.params = redact(s.params)
    return Plan(config_path=config_path, pipeline=config.name, base_model=config.model.base_model,
                base_model_path=base_path, dataset_source=str(d.path),
                dataset_source_sha256=prepared.source_sha256 or source_sha256(d.path), dataset_format=prepared.format,
                dataset_hash=prepared.hash, n_train=prepared.n_train, n_val=prepared.n_val,
                n_duplicates=prepared.n_duplicates, n_too_long=prepared.n_too_long, steps=steps)


def render(p: Plan) -> str:
    lines = [f"plan of {p.config_path} (pipeline {p.pipeline}): nothing below has run",
             f"  base model  {p.base_model}: {p.base_model_path or 'not on this machine'}",
             f"  dataset     {p.dataset_source} (sha256 {p.dataset_source_sha256})",
             f"              {p.n_train} train / {p.n_val} validation {p.dataset_format} records, "
             f"{p.n_duplicates} duplicates dropped, {p.n_too_long} too long; prepared hash {p.dataset_hash}"]
    for i, s in enumerate(p.steps, 1):
        lines.append(f"{i}. {s.step}: {s.does}")
        lines += [f"     {k} = {v}" for k, v in s.params.items() if not isinstance(v, dict)]
        lines += [f"     {k}.{kk} = {vv}" for k, v in s.params.items() if isinstance(v, dict) for kk, vv in v.items()]
        lines += [f"     $ {c}" for c in s.commands]
    return "\n".join(lines)


def across_nodes(section) -> str:
    if section.nodes == 1:
        return ""
    return (f" on each of {section.nodes} nodes of the Ray cluster at {section.cluster.address} "
            "(tasks.finetune.nodes)")
