"""``FlagembeddingFinetune``: embedding and reranker models trained with FlagEmbedding.

    trainer = FlagembeddingFinetune('all-minilm-l6-v2', '/tmp/out', max_steps=50)  # an embed model
    trainer.cmd('train.jsonl')   # Command: python -m FlagEmbedding.finetune.embedder.encoder_only.base ...
    trainer('train.jsonl')       # builds the environment if needed, trains; returns target_path/embed

The base model's type (``ModelManager.get_model_type``) picks the trainer: ``embed`` runs
``FlagEmbedding.finetune.embedder.encoder_only.base``, ``rerank`` runs ``...reranker.encoder_only.base``, each
with the contract's own defaults; any other type is refused. Training runs in its own environment
(``infra/envs/flagembedding.txt``: FlagEmbedding 1.4.2 with transformers 5.6), under ``torchrun`` when the
launcher asks for more than one process. As in the reference package, the model lands in
``target_path/<type>``. No merge: the trained model is the candidate; fineflow drops the trainer's checkpoints and,
for an embedder, writes the sentence-transformers layout (pooling, normalisation) the model was trained with, so every
server pools it alike.

Where this machine has no CUDA, fp16 is turned off and ``--use_cpu True`` is passed; transformers 5 has no
``--overwrite_output_dir``, so fineflow empties the output directory itself when ``overwrite_output_dir`` is on;
negatives are shared across devices only when there is more than one process.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

from tasks import envs
from tasks.core import Command
from tasks.files import write_atomic
from tasks.data import load_dataset, to_flagembedding
from tasks.finetune.base import FinetuneParams, LazyLLMFinetuneBase, random_nccl_port
from tasks.launchers import cuda_available

log = logging.getLogger(__name__)

# The contract's defaults, by model type.
EMBED_DEFAULTS: dict[str, Any] = {
    "train_group_size": 8, "query_max_len": 512, "passage_max_len": 512, "pad_to_multiple_of": 8,
    "query_instruction_for_retrieval": "Represent this sentence for searching relevant passages: ",
    "query_instruction_format": "{}{}", "learning_rate": 1e-5, "num_train_epochs": 1,
    "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "dataloader_drop_last": True,
    "warmup_ratio": 0.1, "weight_decay": 0.01, "deepspeed": "", "logging_steps": 1, "save_steps": 1000,
    "temperature": 0.02, "sentence_pooling_method": "cls", "normalize_embeddings": True, "kd_loss_type": "kl_div",
    "overwrite_output_dir": True, "fp16": True, "gradient_checkpointing": True, "negatives_cross_device": True,
}
RERANK_DEFAULTS: dict[str, Any] = {
    "train_group_size": 8, "query_max_len": 256, "passage_max_len": 256, "pad_to_multiple_of": 8,
    "learning_rate": 6e-5, "num_train_epochs": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
    "dataloader_drop_last": True, "warmup_ratio": 0.1, "weight_decay": 0.01, "deepspeed": "", "logging_steps": 1,
    "save_steps": 1000, "overwrite_output_dir": True, "fp16": True, "gradient_checkpointing": True,
}
# Passed as bare flags when on (the reference package's store-true keys).
FLAGS = {"overwrite_output_dir", "fp16", "gradient_checkpointing", "negatives_cross_device"}
MODULES = {"embed": "FlagEmbedding.finetune.embedder.encoder_only.base",
           "rerank": "FlagEmbedding.finetune.reranker.encoder_only.base"}
EXTRAS: dict[str, Any] = {"max_steps": -1, "seed": 42}  # fineflow's additions, for either type


class FlagembeddingParams(FinetuneParams):
    """Every keyword of either model type; None takes the default of the base model's type."""

    owner: ClassVar[str] = "FlagembeddingFinetune"
    train_group_size: int | None = None
    query_max_len: int | None = None
    passage_max_len: int | None = None
    pad_to_multiple_of: int | None = None
    query_instruction_for_retrieval: str | None = None
    query_instruction_format: str | None = None
    learning_rate: float | None = None
    num_train_epochs: float | None = None
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    dataloader_drop_last: bool | None = None
    warmup_ratio: float | None = None
    weight_decay: float | None = None
    deepspeed: str | None = None
    logging_steps: int | None = None
    save_steps: int | None = None
    temperature: float | None = None
    sentence_pooling_method: str | None = None
    normalize_embeddings: bool | None = None
    kd_loss_type: str | None = None
    overwrite_output_dir: bool | None = None
    fp16: bool | None = None
    gradient_checkpointing: bool | None = None
    negatives_cross_device: bool | None = None
    max_steps: int | None = None
    seed: int | None = None


def model_type_of(base_model: str) -> str:
    from tasks.models import ModelManager

    return ModelManager.get_model_type(os.path.basename(os.path.normpath(base_model)))


class FlagembeddingFinetune(LazyLLMFinetuneBase):
    framework: ClassVar[str] = "flagembedding"
    auto_types: ClassVar[tuple[str, ...]] = ("embed", "rerank")
    auto_rank: ClassVar[int] = 10
    multinode: ClassVar[bool] = True
    Params: ClassVar[type[FinetuneParams]] = FlagembeddingParams
    environment: ClassVar[str | None] = "flagembedding"

    def __init__(self, base_model: str, target_path: str, launcher: Any = None, **kw):
        given = FlagembeddingParams.from_kwargs(kw).model_dump(exclude_none=True)
        self.model_type = model_type_of(base_model)
        if self.model_type not in MODULES:
            raise ValueError(f"FlagembeddingFinetune trains embed or rerank models; {base_model!r} is a "
                             f"{self.model_type} model (a model's type comes from its name: tasks/models/types.py)")
        defaults = EMBED_DEFAULTS if self.model_type == "embed" else RERANK_DEFAULTS
        foreign = sorted(set(given) - set(defaults) - set(EXTRAS))
        if foreign:
            raise ValueError(f"FlagembeddingFinetune: {', '.join(foreign)} do not apply to a {self.model_type} "
                             f"model; its keywords: {', '.join(sorted(defaults))}")
        if not os.path.exists(base_model):
            from tasks.models import ModelManager

            base_model = ModelManager().find_local(base_model) or base_model  # the download step fetches
        super().__init__(base_model, os.path.join(target_path, self.model_type), launcher=launcher)
        self.kw = {**defaults, **EXTRAS, **given}
        self.params = FlagembeddingParams(**self.kw)
        self.nproc = getattr(self.launcher, "ngpus", 1) or 1

    @classmethod
    def auto_params(cls, plan: Any, *, ctx_len: int, lora_r: int) -> dict[str, Any]:
        """AutoFinetune's batch layout; ``ctx_len`` caps the sequence lengths (a full finetune: no LoRA rank)."""
        defaults = EMBED_DEFAULTS if plan.model_type == "embed" else RERANK_DEFAULTS
        return {"per_device_train_batch_size": plan.micro_batch_size,
                "gradient_accumulation_steps": plan.gradient_accumulation_steps,
                "query_max_len": min(ctx_len, defaults["query_max_len"]),
                "passage_max_len": min(ctx_len, defaults["passage_max_len"])}

    # --- what the pipeline asks of a backend
    def formats(self) -> tuple[str, ...]:
        return ("triplets", "rerank")

    def prompt_style(self) -> str:
        return self.model_type  # embeddings and scores: nothing is prompted

    @property
    def cutoff_len(self) -> int | None:
        return None  # passages are truncated to passage_max_len by the framework

    def prepare_data(self, train_path: str, val_path: str | None, fmt: str, out_dir: str | Path
                     ) -> tuple[str, str | None]:
        """The prepare step's JSONL -> FlagEmbedding's ``{query, pos, neg}`` JSONL."""
        data = load_dataset(train_path, fmt)
        return str(to_flagembedding(data, Path(out_dir) / "train.jsonl")), None

    def train_args(self, trainset: str) -> list[str]:
        kw = dict(self.kw)
        if not cuda_available() and kw.get("fp16"):
            log.warning("no CUDA device: fp16 turned off, training in float32")
            kw["fp16"] = False
        if self.nproc * self.nnodes == 1 and kw.get("negatives_cross_device"):
            kw["negatives_cross_device"] = False  # one process: no other device to share negatives with
        if self.model_type == "embed" and not kw["query_instruction_for_retrieval"]:
            kw.pop("query_instruction_for_retrieval")  # empty: no instruction (FlagEmbedding's None)
        kw.pop("overwrite_output_dir")  # transformers 5 rejects it; handled in train_command
        args = ["--model_name_or_path", self.base_model, "--output_dir", self.target_path, "--train_data", trainset,
                "--cache_path", str(Path(self.target_path).parent / "cache"), "--report_to", "none",
                "--disable_tqdm", "True"]
        if deepspeed := kw.pop("deepspeed"):  # empty: no DeepSpeed (it is not in the environment)
            args += ["--deepspeed", deepspeed]
        if not cuda_available():
            args += ["--use_cpu", "True"]
        for key, value in kw.items():
            if key in FLAGS:
                args += [f"--{key}"] if value else []
            else:
                args += [f"--{key}", str(value)]
        return args

    def train_command(self, trainset: str, valset: str | None = None) -> Command:
        resume = self.resume_checkpoint()
        if self.kw["overwrite_output_dir"] and Path(self.target_path).exists():
            for old in Path(self.target_path).iterdir():  # all but the checkpoint a crashed run resumes from
                if not resume or old.name != Path(resume).name:
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
        Path(self.target_path).mkdir(parents=True, exist_ok=True)
        module = MODULES[self.model_type]
        if self.nproc > 1:
            head = [envs.bin_path(self.environment, "torchrun"), "--nproc_per_node", str(self.nproc),
                    "--master_port", str(random_nccl_port()), "-m", module]
        else:
            head = [envs.bin_path(self.environment, "python"), "-m", module]
        env = {**self.command_env(), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if resume:
            wrapper_names(Path(resume))
        resumed = ["--resume_from_checkpoint", resume] if resume else []
        # Its log lines carry no step: they are counted from the checkpoint's (parse_metrics).
        self._logged = int(Path(resume).name.rsplit("-", 1)[1]) // self.kw["logging_steps"] if resume else 0
        return Command([head + self.train_args(trainset) + resumed], return_value=self.target_path, env=env)

    def export_command(self) -> Command | None:
        """Drop the trainer's checkpoints; an embedder gets the sentence-transformers layout it was trained with."""
        argv = [envs.bin_path(envs.MAIN, "python"), "-m", "tasks.finetune.st_layout", "--model", self.target_path]
        if self.model_type == "embed":
            argv += ["--pooling", self.kw["sentence_pooling_method"], "--max-seq-length",
                     str(self.kw["passage_max_len"])] + (["--normalize"] if self.kw["normalize_embeddings"] else [])
        return Command([argv], return_value=self.target_path, env=self.command_env())

    def parse_metrics(self, line: str) -> dict[str, Any] | None:
        """transformers' Trainer prints each log as a dict (``{'loss': '0.41', 'grad_norm': ..., 'epoch': ...}``);
        the n-th one is step n * logging_steps (n counted on from a resumed checkpoint's step)."""
        text = line.strip()
        if not (text.startswith("{") and ("'loss'" in text or "'train_loss'" in text)):
            return None
        try:
            row = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None
        metric = {}
        for key in ("loss", "grad_norm", "learning_rate", "epoch", "train_loss", "train_runtime"):
            try:
                metric[key] = float(row[key])
            except (KeyError, TypeError, ValueError):
                continue
        if "loss" not in metric and "train_loss" not in metric:
            return None
        self._logged = getattr(self, "_logged", 0) + ("loss" in metric)
        return {"step": self._logged * self.kw["logging_steps"], **metric}


def wrapper_names(checkpoint: Path) -> None:
    """Make a FlagEmbedding checkpoint resumable. It saves the weights under the inner model's names, while its
    Trainer reloads them into the wrapper, whose names start with ``model.``: transformers then finds every key
    missing and fails (FlagEmbedding 1.4.2: ``'BiEncoderOnlyEmbedderModel' object has no attribute
    '_keys_to_ignore_on_save'``). The checkpoint's weights are renamed to the wrapper's, once, before resuming."""
    from safetensors.torch import load_file, save_file

    for path in sorted(checkpoint.glob("model*.safetensors")):
        weights = load_file(path)
        if all(name.startswith("model.") for name in weights):
            continue
        aside = path.with_name(f".{path.name}.new")
        save_file({f"model.{name}": tensor for name, tensor in weights.items()}, str(aside), metadata={"format": "pt"})
        os.replace(aside, path)
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {(k if k.startswith("model.") else f"model.{k}"): v for k, v in data["weight_map"].items()}
        write_atomic(index, json.dumps(data, indent=1))


def flagembedding(base_model: str, target_path: str, **kw) -> FlagembeddingFinetune:
    return FlagembeddingFinetune(base_model, target_path, **kw)
