"""The finetune backend interface, behind the contract's ``LazyLLMFinetuneBase``, and ``DummyFinetune``.

A framework is one module under ``tasks/finetune/`` with one class that declares:

- ``framework`` (its name in the table in ``tasks/finetune/__init__.py`` and in pipeline configs);
- ``Params``: its keyword arguments as a pydantic model holding the contract's defaults once;
- ``environment``: the ``infra/envs/<name>.txt`` it runs in (None: this interpreter);
- ``formats()``: the dataset formats it trains on, and ``prepare_data()``: the converter to its files;
- ``train_command()`` and ``export_command()`` (merge the adapter / copy the model; None if training
  leaves the finished model): the commands, as argv lists;
- ``metrics_file()`` / ``parse_metrics()``: how its log becomes step metrics;
- ``prompt_style()``: how the trained model must be prompted (``tasks.inference``).

The pipeline's steps call only these; ``cmd()`` and ``__call__`` are the contract's face over them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from tasks import bounds, envs, launchers
from tasks.core import Command, ComponentBase, check_kwargs
from tasks.services import checkpoints

METRIC_PREFIX = "FINEFLOW_METRIC "


def parse_metric_line(line: str) -> dict[str, Any] | None:
    """fineflow's training scripts print ``FINEFLOW_METRIC {json}`` lines; the step logs them while training runs."""
    if not line.startswith(METRIC_PREFIX):
        return None
    try:
        return json.loads(line[len(METRIC_PREFIX):])
    except json.JSONDecodeError:
        return None


class FinetuneParams(BaseModel):
    """A framework's keyword arguments. Unknown names fail naming the closest allowed one."""

    model_config = ConfigDict(extra="forbid")
    owner: ClassVar[str] = "finetune"
    aliases: ClassVar[dict[str, str]] = {}  # accepted name -> field (the contract's ``auto_map``)

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            check_kwargs(cls.owner, data, [*cls.model_fields, *cls.aliases])
            data = {cls.aliases.get(k, k): v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _in_range(self) -> "FinetuneParams":
        bounds.check(self.owner, dict(self))
        return self

    @classmethod
    def from_kwargs(cls, kw: dict[str, Any]) -> "FinetuneParams":
        check_kwargs(cls.owner, kw, [*cls.model_fields, *cls.aliases])  # UnknownKwargsError, a TypeError
        try:
            return cls.model_validate(kw)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ValueError(f"{cls.owner}: {problems}") from None


class LazyLLMFinetuneBase(ComponentBase):
    """Holds the base model and the target path; the launcher defaults to ``remote(ngpus=1)``."""

    framework: ClassVar[str] = ""
    Params: ClassVar[type[FinetuneParams]] = FinetuneParams
    environment: ClassVar[str | None] = envs.MAIN
    model_type: str = "llm"  # what the trained model is (tasks.models.types): how the pipeline evaluates it
    auto_types: ClassVar[tuple[str, ...]] = ()  # the model types AutoFinetune may choose it for
    auto_rank: ClassVar[int] = 100  # its place among the frameworks of a type: the first available one wins
    # Its training command may run across nodes (tasks.finetune.nodes): every path it reads or writes is in its
    # argv, where the launcher stages it, and it runs under torchrun.
    multinode: ClassVar[bool] = False

    def __init__(self, base_model: str, target_path: str, *, launcher: Any = None):
        super().__init__(launcher=launcher or launchers.remote(ngpus=1))
        self.base_model = base_model
        self.target_path = target_path
        self.merge_path: str | None = None

    @property
    def nnodes(self) -> int:
        """The machines its training spans (``tasks.finetune.nodes``); 1 on one machine."""
        return getattr(self.launcher, "nnodes", 1)

    # The backend interface; a framework overrides what differs.
    def preflight(self) -> None:
        """Fail at once, saying what is missing, where the framework cannot run on this machine."""

    def formats(self) -> tuple[str, ...]:
        return ("alpaca",)

    @property
    def cutoff_len(self) -> int | None:
        return getattr(getattr(self, "params", None), "cutoff_len", None)

    def prompt_style(self) -> str:
        return "alpaca"

    def prepare_data(self, train_path: str, val_path: str | None, fmt: str, out_dir: str | Path
                     ) -> tuple[str, str | None]:
        """The prepare step's JSONL files -> what ``train_command`` takes. Default: used as they are."""
        return train_path, val_path

    def train_command(self, trainset: str, valset: str | None = None) -> Command:
        raise NotImplementedError

    def export_command(self) -> Command | None:
        """What turns the training output into the finished model in ``merge_path``; None: nothing to do."""
        return None

    def resume_checkpoint(self) -> str | None:
        """The newest wholly saved checkpoint under ``target_path`` (a crashed run's, or one the pipeline restored
        from S3), which ``train_command`` resumes from; half-written ones are removed. None: start from step 0."""
        return checkpoints.last_complete(self.target_path) if Path(self.target_path).is_dir() else None

    def metrics_file(self) -> Path | None:
        """A file the framework appends metric lines to while training (None: its stdout carries them)."""
        return None

    def parse_metrics(self, line: str) -> dict[str, Any] | None:
        """A dict with ``step`` and metric values from one log line, or None."""
        return parse_metric_line(line)

    @property
    def output_path(self) -> str:
        """Where the finished model is once the commands have run."""
        return self.merge_path or self.target_path

    @classmethod
    def auto_params(cls, plan: Any, *, ctx_len: int, lora_r: int) -> dict[str, Any]:
        """This framework's keyword arguments for an ``AutoFinetune`` plan (batch layout, context, rank)."""
        raise NotImplementedError(f"{cls.__name__} cannot be chosen by AutoFinetune")

    def command_env(self) -> dict[str, str]:
        """Environment variables for the commands: the framework environment's bin on PATH."""
        return envs.path_env(self.environment)

    def cmd(self, trainset: str, valset: str | None = None) -> Command:
        train = self.train_command(trainset, valset)
        export = self.export_command()
        argvs = train.argvs + (export.argvs if export else [])
        return Command(argvs, return_value=self.output_path, env={**train.env, **(export.env if export else {})})

    def __repr__(self) -> str:
        return f"<fineflow.llm.finetune type={type(self).__name__}>"

    def __call__(self, *args, **kw):
        self.preflight()
        envs.ensure(self.environment)
        super().__call__(*args, **kw)
        return self.merge_path or self.target_path


class DummyFinetune(LazyLLMFinetuneBase):
    """A placeholder: its command echoes the keyword arguments it was built with."""

    def __init__(self, base_model: str = "base", target_path: str = "target", *, launcher: Any = None, **kw):
        super().__init__(base_model, target_path, launcher=launcher or launchers.remote())
        self.kw = kw

    def cmd(self, *args, **kw) -> str:
        return f"echo 'dummy finetune!, and init-args is {self.kw}'"


class MergedLoraFinetune(LazyLLMFinetuneBase):
    """A framework that leaves a PEFT adapter which fineflow merges into the base (``tasks.finetune.merge``, in this
    environment) and completes with the base's ``cp_files``: AlpacaLoRA and CoLLiE. Their contract
    constructors are the same; their ``Params`` have ``prompt_template_name``."""

    def __init__(self, base_model: str, target_path: str, merge_path: str | None = None, model_name: str = "LLM",
                 cp_files: str = "tokeniz*", launcher: Any = None, **kw):
        self.params = self.Params.from_kwargs(kw)
        target_path, merge_path = split_target(target_path, merge_path)
        super().__init__(base_model, target_path, launcher=launcher)
        self.merge_path, self.model_name, self.cp_files = merge_path, model_name, cp_files
        self.kw = self.params.model_dump()

    def prompt_style(self) -> str:
        return self.params.prompt_template_name

    def export_command(self) -> Command | None:
        python = envs.bin_path(envs.MAIN, "python")
        merge = [python, "-m", "tasks.finetune.merge", "merge", "--base_model", self.base_model,
                 "--lora_path", self.target_path, "--merge_path", self.merge_path]
        copy = [python, "-m", "tasks.finetune.merge", "copy", "--src", self.base_model, "--dst", self.merge_path,
                "--pattern", self.cp_files]
        return Command([merge, copy], return_value=self.merge_path, env=self.command_env())


def split_target(target_path: str, merge_path: str | None) -> tuple[str, str]:
    """The contract's layout: without ``merge_path``, ``target_path/lazyllm_lora`` and ``target_path/lazyllm_merge``."""
    if merge_path:
        return target_path, merge_path
    return os.path.join(target_path, "lazyllm_lora"), os.path.join(target_path, "lazyllm_merge")


def parse_module_list(value: str | list[str] | None) -> list[str]:
    """``'[wo,wqkv]'`` or ``'wo, wqkv'`` or ``['wo']`` -> ``['wo', 'wqkv']``."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in re.split(r"[,\s]+", value.strip().strip("[]")) if v.strip()]


def random_nccl_port() -> int:
    return 19000 + int.from_bytes(os.urandom(2), "big") % 1500
