"""The merged candidate as an MLflow model: saved with the flavor of its model type (``transformers`` for an LLM or
a reranker, ``sentence_transformers`` for an embedder), logged as an MLflow 3 logged model linked to the run,
stored through the tracking server into the bucket and checked there file by file before it is marked READY.

A client that holds only ``MLFLOW_TRACKING_URI`` and its login then loads a registered version with MLflow's own tools::

    mlflow.transformers.load_model("models:/fineflow-quickstart@production")
    mlflow models serve -m models:/fineflow-quickstart@production --env-manager local

The flavor's model folder (``model/`` or ``model.sentence_transformer/``) holds the merged files exactly as they
were evaluated (and the tokenizer), so it is also a plain checkpoint that every engine serves: ``files_uri``.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tasks.services import storage, tracking


@dataclass(frozen=True)
class Flavor:
    module: str  # mlflow.<module>
    folder: str  # where the flavor puts the model's own files
    task: str | None  # the transformers pipeline task
    requirements: tuple[str, ...]  # what the serving environment needs, pinned to this environment's versions


FLAVORS = {
    "llm": Flavor("transformers", "model", "text-generation", ("transformers", "torch", "accelerate")),
    "rerank": Flavor("transformers", "model", "text-classification", ("transformers", "torch")),
    "embed": Flavor("sentence_transformers", "model.sentence_transformer", None,
                    ("sentence-transformers", "transformers", "torch")),
}
INPUT_EXAMPLES = {"llm": "### Instruction:\nSay hello.\n\n### Response:\n", "rerank": "hello", "embed": ["hello"]}


# Large files go up in parallel parts straight to the bucket, on URLs the tracking server signs (MLflow's proxied
# multipart upload; a server whose store cannot do it takes them whole).
MULTIPART = {"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
             "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(64 << 20),
             "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE": str(64 << 20)}


@dataclass(frozen=True)
class LoggedModel:
    model_id: str
    uri: str  # models:/m-...: what a registered version's source names
    files_uri: str  # s3:// of the plain checkpoint inside it


def pinned(names: tuple[str, ...]) -> list[str]:
    out = [f"mlflow=={importlib.metadata.version('mlflow')}"]
    for name in names:
        try:
            out.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def save(model_dir: str | Path, model_type: str, dest: Path, mlflow_model=None) -> Flavor:
    """Save ``model_dir`` as an MLflow model in ``dest`` (which must not exist). The flavor's model folder is then
    replaced by the merged files themselves (hard links where possible), so what is served is what was evaluated."""
    flavor = FLAVORS.get(model_type)
    if flavor is None:
        raise ValueError(f"no MLflow flavor is known for {model_type} models (known: {', '.join(FLAVORS)})")
    module = importlib.import_module(f"mlflow.{flavor.module}")
    kw = {"mlflow_model": mlflow_model, "pip_requirements": pinned(flavor.requirements),
          "input_example": INPUT_EXAMPLES[model_type]}
    if flavor.module == "transformers":
        import transformers
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

        pipe = transformers.pipeline(flavor.task, model=str(model_dir))
        if flavor.task == "text-generation":  # answers only (not the prompt again), length per request
            kw["signature"] = ModelSignature(Schema([ColSpec("string")]), Schema([ColSpec("string")]),
                                             ParamSchema([ParamSpec("max_new_tokens", "long", 64)]))
            kw["model_config"] = {"return_full_text": False}
        # A local folder has no hub model card: MLflow would warn that it cannot fetch one.
        with quiet("mlflow.transformers"):
            module.save_model(pipe, str(dest), **kw)
    else:
        from sentence_transformers import SentenceTransformer

        module.save_model(SentenceTransformer(str(model_dir)), str(dest), **kw)
    folder = dest / flavor.folder
    tokenizer = dest / "components" / "tokenizer"
    shutil.rmtree(folder)
    shutil.copytree(model_dir, folder, copy_function=_link)
    if tokenizer.is_dir():  # the checkpoint keeps its own tokenizer files; MLflow reads its copy
        for f in tokenizer.iterdir():
            if not (folder / f.name).exists():
                shutil.copy2(f, folder / f.name)
    return flavor


@contextmanager
def quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def log_merged(run_id: str, model_dir: str | Path, model_type: str, workdir: Path, log=print,
               attempts: int = 2) -> LoggedModel:
    """Log ``model_dir`` as the run's logged model ``merged_model``: saved in ``workdir/mlflow_model`` with its
    type's flavor, uploaded through the tracking server, verified (``log_folder``)."""
    return log_folder(run_id, "merged_model", model_type, workdir,
                      lambda dest, model: save(model_dir, model_type, dest, model).folder, log, attempts)


def log_adapter(run_id: str, adapter_dir: str | Path, workdir: Path, log=print, attempts: int = 2) -> LoggedModel:
    """Log a LoRA adapter folder (PEFT's files and ``fineflow_base.json``, which names its base model and base
    revision) as the run's logged model ``adapter``, in its ``adapter/`` folder: a client with the tracking URI
    downloads it (``mlflow.artifacts.download_artifacts("models:/NAME@ALIAS")``) and loads it on its base with
    ``peft.PeftModel.from_pretrained(base, folder / "adapter")``."""
    def write(dest: Path, model) -> str:
        dest.mkdir(parents=True)
        shutil.copytree(adapter_dir, dest / "adapter", copy_function=_link)
        base = json.loads((Path(adapter_dir) / "fineflow_base.json").read_text())
        model.metadata = {"fineflow.kind": "lora_adapter", **{f"fineflow.{k}": v for k, v in base.items()}}
        model.save(str(dest / "MLmodel"))
        return "adapter"
    return log_folder(run_id, "adapter", "llm-adapter", workdir, write, log, attempts)


def log_folder(run_id: str, name: str, model_type: str, workdir: Path, write, log=print,
               attempts: int = 2) -> LoggedModel:
    """Log what ``write(dest, mlflow_model)`` puts in ``workdir/mlflow_model`` (returning the folder in it that
    holds the model's own files) as the run's logged model ``name``: uploaded through the tracking server,
    verified in the bucket (uploaded again once if not whole), then READY. A model that never got whole is marked
    FAILED and the error raised, so nothing is registered on top of it."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    for variable, default in MULTIPART.items():  # what the environment sets wins
        os.environ.setdefault(variable, default)
    c = tracking.client()
    run = c.get_run(run_id)
    logged = c.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                   model_type=model_type, tags={"fineflow.model_type": model_type})
    c.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    local = workdir / "mlflow_model"
    shutil.rmtree(local, ignore_errors=True)
    try:
        folder = write(local, Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id,
                                    run_id=run_id, model_id=logged.model_id))
        uri = tracking.s3_of(logged.artifact_location)
        for attempt in range(1, attempts + 1):
            c.log_model_artifacts(logged.model_id, str(local))
            try:
                size = storage.verify_upload(local, uri)
                break
            except storage.UploadError as e:
                if attempt == attempts:
                    raise
                log(f"{e}; uploading again")
    except BaseException:
        c.finalize_logged_model(logged.model_id, "FAILED")
        raise
    c.finalize_logged_model(logged.model_id, "READY")
    log(f"logged {name} as MLflow model {logged.model_id} in {uri}: {size} bytes, every file checked")
    return LoggedModel(model_id=logged.model_id, uri=f"models:/{logged.model_id}", files_uri=f"{uri}/{folder}")
