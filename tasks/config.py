"""Pipeline configuration: the YAML files in ``deployments/``, validated in one place.

An error names the file and the field (``deployments/x.yaml: finetune.params: ...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.evaluate import GateConfig
from tasks.settings import REPO_ROOT


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(Section):
    base_model: str = "tiny-llama"


class DataSection(Section):
    path: str
    val_set_size: int = Field(200, ge=1)
    prompt_template_name: str = "alpaca"
    seed: int = 42
    # Records longer than the finetune's cutoff_len (in tokens): "warn" counts them (training truncates),
    # "reject" fails the run before training, naming the first one.
    on_long: Literal["warn", "reject"] = "warn"

    @field_validator("prompt_template_name")
    @classmethod
    def known_prompter(cls, name: str) -> str:
        from tasks.prompter import get_prompter

        get_prompter(name)  # a ValueError naming the known ones
        return name


class FinetuneSection(Section):
    framework: Literal["alpacalora"] = "alpacalora"
    params: dict[str, Any] = {}

    @field_validator("params")
    @classmethod
    def known_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        from tasks.core import check_kwargs
        from tasks.finetune.alpacalora import DEFAULTS, FINEFLOW_EXTRAS

        # data_path/val_set_size/prompt_template_name come from the data section.
        try:
            check_kwargs("AlpacaloraFinetune", params, set(DEFAULTS) | set(FINEFLOW_EXTRAS))
        except TypeError as e:  # pydantic reports ValueErrors with the field's location
            raise ValueError(str(e)) from None
        return params


class EvaluateSection(Section):
    max_samples: int = Field(200, ge=1)
    max_new_tokens: int = Field(32, ge=1, le=512)
    gate: GateConfig = GateConfig()


class DeploySection(Section):
    backend: Literal["relay"] = "relay"
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    # How the endpoint's answers are shaped (tasks.formatter): a formatter name and its selector.
    formatter: str = "empty"
    formatter_selector: str | None = None

    @model_validator(mode="after")
    def known_formatter(self) -> "DeploySection":
        from tasks.formatter import make_formatter

        make_formatter(self.formatter, self.formatter_selector)  # FormatterError is a ValueError
        return self


class RegisterSection(Section):
    model_name: str
    alias: str = "production"


class PipelineConfig(Section):
    name: str
    experiment: str = "fineflow"
    model: ModelSection = ModelSection()
    data: DataSection
    finetune: FinetuneSection = FinetuneSection()
    evaluate: EvaluateSection = EvaluateSection()
    deploy: DeploySection = DeploySection()
    registry: RegisterSection


class ConfigError(ValueError):
    pass


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path, overrides: dict | None = None) -> PipelineConfig:
    """Read, merge ``overrides`` into, and validate a pipeline YAML; relative data paths are from the repo root."""
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: file not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    raw = deep_merge(raw, overrides or {})
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{path}: {problems}") from None
    if not Path(config.data.path).is_absolute() and not config.data.path.startswith("s3://"):
        config.data.path = str(REPO_ROOT / config.data.path)
    return config
