"""``LlamafactoryFinetune``: training with LLaMA-Factory (``llamafactory-cli train``, then ``export`` for LoRA).

    trainer = LlamafactoryFinetune('infra/models/tiny-llama', '/tmp/out', max_steps=100, lora_r=16)
    trainer.cmd('train.json')    # [llamafactory-cli train .../train.yaml, llamafactory-cli export .../export.yaml]
    trainer('train.json')        # builds the environment if needed, runs both; returns merge_path

Runs in its own environment (``infra/envs/llamafactory.txt``). The data file is validated
(a bad record names file, line and field before anything runs), converted to LLaMA-Factory's
layout with a generated ``dataset_info.json``, and the YAMLs are written beside the target:
the contract's defaults, then the ``config_path`` / ``export_config_path`` overlays, then the
keyword arguments given. More than one process (``launchers.remote(ngpus=N)``) runs under
``torchrun --nproc_per_node N`` (LLaMA-Factory's ``FORCE_TORCHRUN``); ``deepspeed`` names a
ZeRO config. Without CUDA, fp16/bf16 are turned off (CPU training is float32).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from tasks import envs
from tasks.core import Command
from tasks.data import DatasetError, load_dataset, read_jsonl, to_llamafactory
from tasks.data.load import Dataset
from tasks.finetune.base import FinetuneParams, LazyLLMFinetuneBase, split_target
from tasks.inference import CHAT_TEMPLATE
from tasks.launchers import cuda_available

log = logging.getLogger(__name__)

# Model-name prefix -> LLaMA-Factory template (the longest matching prefix wins). A model whose name matches none
# is trained in its own chat template when it ships one (MODEL_TEMPLATE: LLaMA-Factory parses the tokenizer's, and
# the export keeps it, so the served template is the trained one: LLaMA-Factory's `smollm2`, for one, differs from
# SmolLM2's by a full stop in the system prompt), else in FALLBACK_TEMPLATE (the embedded tiny-llama has none);
# pass template= to choose.
TEMPLATES = {"qwen": "qwen", "qwen2": "qwen", "qwen2.5": "qwen", "qwen3": "qwen3", "llama-2": "llama2",
             "llama2": "llama2", "llama-3": "llama3", "llama3": "llama3", "meta-llama-3": "llama3",
             "internlm": "intern", "internlm2": "intern2", "internlm3": "intern3", "chatglm3": "chatglm3",
             "glm-4": "glm4", "baichuan2": "baichuan2", "mistral": "mistral", "gemma": "gemma",
             "deepseek": "deepseek", "yi": "yi", "phi-3": "phi"}
FALLBACK_TEMPLATE = "default"
MODEL_TEMPLATE = None  # LLaMA-Factory's `template` left unset: it reads the tokenizer's chat template
# What each stage trains on (fineflow's dataset formats).
STAGE_FORMATS = {"sft": ("alpaca", "sharegpt", "openai"), "pt": ("text",), "dpo": ("preference",),
                 "kto": ("preference",), "rm": ("preference",), "ppo": ("alpaca",)}
TRAIN, VAL = "fineflow_train", "fineflow_val"


def template_for(base_model: str) -> str | None:
    name = os.path.basename(os.path.normpath(base_model)).lower()
    matches = [prefix for prefix in TEMPLATES if name.startswith(prefix)]
    if matches:
        return TEMPLATES[max(matches, key=len)]
    return MODEL_TEMPLATE if ships_chat_template(base_model) else FALLBACK_TEMPLATE


def ships_chat_template(model_path: str) -> bool:
    """Whether a local model folder carries a chat template (a ``chat_template.jinja``/``.json`` file, or one in
    ``tokenizer_config.json``)."""
    folder = Path(model_path)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))


class LlamafactoryParams(FinetuneParams):
    """The contract's constructor arguments and keyword defaults, then fineflow's additions."""

    owner: ClassVar[str] = "LlamafactoryFinetune"
    aliases: ClassVar[dict[str, str]] = {"gradient_step": "gradient_accumulation_steps",
                                         "micro_batch_size": "per_device_train_batch_size"}
    config_path: str | None = None
    export_config_path: str | None = None
    lora_r: int | None = None  # -> lora_rank
    modules_to_save: str | None = None  # -> additional_target
    lora_target_modules: str | None = None  # -> lora_target
    stage: Literal["pt", "sft", "rm", "ppo", "dpo", "kto"] = "sft"
    do_train: bool = True
    finetuning_type: Literal["lora", "freeze", "full"] = "lora"
    lora_target: str = "all"
    template: str | None = None
    cutoff_len: int = 1024
    max_samples: int | None = 1000
    overwrite_cache: bool = True
    preprocessing_num_workers: int | None = 16
    dataset_dir: str = "lazyllm_temp_dir"
    logging_steps: float = 10
    save_steps: float = 500
    plot_loss: bool = True
    overwrite_output_dir: bool = True
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    learning_rate: float = 1e-4
    num_train_epochs: float = 3.0
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1
    fp16: bool = True
    ddp_timeout: int | None = 180000000
    report_to: str | list[str] | None = "tensorboard"
    val_size: float = 0.1
    per_device_eval_batch_size: int = 1
    eval_strategy: str = "steps"
    eval_steps: float | None = 500
    # fineflow's additions
    max_steps: int = -1
    lora_alpha: int | None = None
    lora_dropout: float = 0.0
    bf16: bool = False
    deepspeed: str | None = None
    pref_beta: float = 0.1
    pref_ftx: float = 0.0  # an SFT loss on the chosen answers, mixed into DPO
    save_total_limit: int | None = 2
    seed: int = 42


# The arguments that name files or folders on this machine.
PATHS = ("model_name_or_path", "dataset_dir", "output_dir", "resume_from_checkpoint", "deepspeed")
# Params that are fineflow's handles on the YAML, not LLaMA-Factory arguments of the same name.
NOT_YAML = {"config_path", "export_config_path", "lora_r", "modules_to_save", "lora_target_modules", "dataset_dir"}


def _yaml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping of LLaMA-Factory arguments, got {type(data).__name__}")
    return data


class LlamafactoryFinetune(LazyLLMFinetuneBase):
    framework: ClassVar[str] = "llamafactory"
    auto_types: ClassVar[tuple[str, ...]] = ("llm", "vlm")
    auto_rank: ClassVar[int] = 10
    multinode: ClassVar[bool] = True
    Params: ClassVar[type[FinetuneParams]] = LlamafactoryParams
    environment: ClassVar[str | None] = "llamafactory"

    def __init__(self, base_model: str, target_path: str, merge_path: str | None = None,
                 config_path: str | None = None, export_config_path: str | None = None, lora_r: int | None = None,
                 modules_to_save: str | None = None, lora_target_modules: str | None = None, launcher: Any = None,
                 **kw):
        given = {"config_path": config_path, "export_config_path": export_config_path, "lora_r": lora_r,
                 "modules_to_save": modules_to_save, "lora_target_modules": lora_target_modules}
        self.params = LlamafactoryParams.from_kwargs({**{k: v for k, v in given.items() if v is not None}, **kw})
        if not os.path.exists(base_model):
            from tasks.models import ModelManager

            base_model = ModelManager().find_local(base_model) or base_model
        target_path, merge_path = split_target(target_path, merge_path)
        super().__init__(base_model, target_path, launcher=launcher)
        self.merge_path = merge_path
        self.template = self.params.template or template_for(base_model)
        self.work_dir = Path(target_path).parent / "llamafactory"
        self.kw = self.params.model_dump()

    # --- what the pipeline asks of a backend
    def formats(self) -> tuple[str, ...]:
        return STAGE_FORMATS[self.params.stage]

    def prompt_style(self) -> str:
        return CHAT_TEMPLATE  # LLaMA-Factory saves its template as the exported tokenizer's chat template

    @classmethod
    def auto_params(cls, plan, *, ctx_len: int, lora_r: int) -> dict[str, Any]:
        return {"per_device_train_batch_size": plan.micro_batch_size,
                "gradient_accumulation_steps": plan.gradient_accumulation_steps, "cutoff_len": ctx_len,
                "lora_r": lora_r}

    def prepare_data(self, train_path: str, val_path: str | None, fmt: str, out_dir: str | Path
                     ) -> tuple[str, str | None]:
        """The prepare step's JSONL (records as loaded, plus fineflow's rendered ``prompt``) -> a LLaMA-Factory
        ``dataset_dir`` holding both splits."""
        self._check_format(fmt, train_path, None)
        for name, path in ((TRAIN, train_path), (VAL, val_path)):
            if path:
                records = [{k: v for k, v in r.items() if k != "prompt"} for r in read_jsonl(path)]
                to_llamafactory(Dataset(path=path, format=fmt, records=records), out_dir, name=name)
        return str(out_dir), None

    def metrics_file(self) -> Path:
        return Path(self.target_path) / "trainer_log.jsonl"

    def parse_metrics(self, line: str) -> dict[str, Any] | None:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(row, dict) or "current_steps" not in row:
            return None
        names = {"loss": "loss", "eval_loss": "eval_loss", "lr": "learning_rate", "epoch": "epoch",
                 "throughput": "tokens_per_second", "total_tokens": "total_tokens", "reward": "reward",
                 "accuracy": "accuracy"}
        metric = {names[k]: v for k, v in row.items() if k in names and isinstance(v, (int, float))}
        # The closing row repeats the throughput with no loss: nothing new to log.
        measured = {"loss", "eval_loss", "reward", "accuracy"} & set(metric)
        return {"step": row["current_steps"], **metric} if measured else None

    # --- the commands
    def _check_format(self, fmt: str, path: str, line: int | None) -> None:
        if fmt not in self.formats():
            raise DatasetError(path, line, None, f"LLaMA-Factory stage {self.params.stage!r} trains on "
                                                 f"{' or '.join(self.formats())} records, not {fmt} records")

    def _dataset_dir(self, trainset: str, valset: str | None) -> Path:
        """A ``dataset_dir`` as given, or one written from data files (validated first)."""
        if (Path(trainset) / "dataset_info.json").is_file():
            return Path(trainset)
        out = self.work_dir / "dataset"
        for name, path in ((TRAIN, trainset), (VAL, valset)):
            if path:
                dataset = load_dataset(path)  # DatasetError names file, line and field
                self._check_format(dataset.format, path, dataset.lines[0] if dataset.lines else None)
                to_llamafactory(dataset, out, name=name)
        return out

    def train_args(self, dataset_dir: Path) -> dict[str, Any]:
        p = self.params
        args: dict[str, Any] = {k: v for k, v in p.model_dump().items() if k not in NOT_YAML}
        args = {**args, **_yaml(p.config_path),
                **{k: getattr(p, k) for k in p.model_fields_set if k not in NOT_YAML}}
        if p.lora_r is not None:
            args["lora_rank"] = p.lora_r
        if p.modules_to_save:
            args["additional_target"] = p.modules_to_save.strip("[]")
        if p.lora_target_modules:
            args["lora_target"] = p.lora_target_modules.strip("[]")
        described = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
        args.update(model_name_or_path=self.base_model, output_dir=self.target_path, template=self.template,
                    dataset_dir=str(dataset_dir), dataset=TRAIN if TRAIN in described else ",".join(described),
                    include_num_input_tokens_seen=True)
        if VAL in described:
            args.update(eval_dataset=VAL, val_size=0)
        elif not args.get("val_size"):
            args["eval_strategy"] = "no"
        if args.get("deepspeed") is None:
            args.pop("deepspeed", None)
        if resume := self.resume_checkpoint():  # named, so overwrite_output_dir (the contract's default) keeps it
            args["resume_from_checkpoint"] = resume
        if not cuda_available() and (args.get("fp16") or args.get("bf16")):
            log.warning("no CUDA device: fp16/bf16 turned off, training in float32")
            args.update(fp16=False, bf16=False)
        return args

    def export_args(self) -> dict[str, Any]:
        args = {"finetuning_type": "lora", "export_size": 2, "export_device": "cpu", "export_legacy_format": False,
                **_yaml(self.params.export_config_path)}
        args.update(model_name_or_path=self.base_model, adapter_name_or_path=self.target_path,
                    export_dir=self.merge_path, template=self.template)
        return args

    def _write(self, name: str, args: dict[str, Any]) -> str:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / name
        path.write_text(yaml.safe_dump(args, sort_keys=False, allow_unicode=True), encoding="utf-8")
        return str(path)

    def command_env(self) -> dict[str, str]:
        env = {**super().command_env(), "DISABLE_VERSION_CHECK": "1"}
        nproc = getattr(self.launcher, "ngpus", 1) or 1
        if nproc > 1 or self.nnodes > 1:  # across nodes its CLI reads NNODES, NODE_RANK, MASTER_* (the launcher's)
            env.update(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(nproc))
        return env

    def train_command(self, trainset: str, valset: str | None = None) -> Command:
        args = self.train_args(self._dataset_dir(trainset, valset))
        config = self._write("train.yaml", args)
        # Across nodes, the paths are also given as the CLI's overrides of the YAML (``key=value``), where the
        # launcher finds them and gives each node its own copies.
        paths = [f"{k}={args[k]}" for k in PATHS if k in args] if self.nnodes > 1 else []
        return Command([envs.bin_path(self.environment, "llamafactory-cli"), "train", config, *paths],
                       return_value=self.target_path, env=self.command_env())

    def export_command(self) -> Command | None:
        if self.params.finetuning_type == "lora":
            argv = [envs.bin_path(self.environment, "llamafactory-cli"), "export",
                    self._write("export.yaml", self.export_args())]
        else:  # a full or freeze finetune is the model: copy its files (not the checkpoints) to merge_path
            argv = [envs.bin_path(envs.MAIN, "python"), "-m", "tasks.finetune.merge", "copy", "--src", self.target_path,
                    "--dst", self.merge_path, "--pattern", "*"]
        return Command(argv, return_value=self.merge_path, env=self.command_env())


def llamafactory(base_model: str, target_path: str, **kw) -> LlamafactoryFinetune:
    return LlamafactoryFinetune(base_model, target_path, **kw)
