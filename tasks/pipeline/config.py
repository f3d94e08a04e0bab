"""Pipeline configuration: the YAML files in ``deployments/``, validated in one place.

An error names the file and the field (``deployments/x.yaml: finetune.llamafactory.params: ...``); reading the
file (size, duplicate keys, overrides) is ``config_files.py``.
``finetune`` is a union keyed on ``framework`` and ``deploy`` one keyed on ``backend``, built from
the backend tables, so each backend's parameters are checked by its own typed model. Validating
a config imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from tasks.data.prepare import MAX_RECORD_CHARS
from tasks.data.readers import confine
from tasks.deploy import ENGINES, LazyLLMDeployBase, engine_for
from tasks.evaluate import MEASURED, GateConfig
from tasks.evaluate.answers import answer_of
from tasks.finetune import FRAMEWORKS
from tasks.finetune.nodes import ClusterSection
from tasks.formatter import make_formatter
from tasks.inference.prompts import check_style
from tasks.models.types import get_model_type
from tasks.net import LOOPBACK
from tasks.pipeline.config_files import ConfigError, config_file, read_config
from tasks.servers.traffic import TrafficConfig
from tasks.serving.canary import CanaryConfig
from tasks.serving.platforms import ServingSection, platform
from tasks.settings import REPO_ROOT


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(Section):
    base_model: str = "tiny-llama"

    @field_validator("base_model")
    @classmethod
    def _a_model_where_a_path_is_given(cls, value: str) -> str:
        """A name is looked up later (search roots, cache, hub); a path that exists here must be a model."""
        from tasks.models.local import holds_weights

        path = Path(value).expanduser()
        if (path.is_file() and path.suffix != ".gguf") or (path.is_dir() and not holds_weights(path)):
            raise ValueError(f"{value} is a {'file' if path.is_file() else 'folder'} here but not a model (a folder "
                             "with weights, a .gguf file): give a model folder, a GGUF file or a model name")
        return value


class DataSection(Section):
    path: str
    val_set_size: int = Field(200, ge=1, le=10_000_000)
    prompt_template_name: str = "alpaca"
    seed: int = Field(42, ge=0, le=2**32 - 1)
    # Records longer than the finetune's cutoff_len (in tokens): "warn" counts them (training truncates),
    # "reject" fails the run before training, naming the first one.
    on_long: Literal["warn", "reject"] = "warn"
    # A record with more characters than this (all fields together) fails the run before training, naming it.
    max_record_chars: int = Field(MAX_RECORD_CHARS, ge=100, le=10_000_000)

    @field_validator("prompt_template_name")
    @classmethod
    def known_prompter(cls, name: str) -> str:
        return check_style(name)  # a ValueError naming the known ones


# pragma: no mutate start (runs once, at import, where a mutation tester cannot switch a mutant in; the
# sections it builds are checked by tests/unit/test_config.py)
def _sections(table: dict[str, type], key: str, fields: dict[str, Any], base: type[BaseModel]) -> Any:
    """One config section per row of a backend table, joined in a union on ``key`` (the row's name); each
    section's ``params`` is that backend's own typed ``Params``."""
    sections = [create_model(f"{name.title()}{base.__name__}", __base__=base,
                             **{key: (Literal[name], name), "params": (cls.Params, Field(default_factory=cls.Params))},
                             **fields)
                for name, cls in table.items()]
    return Annotated[Union[tuple(sections)], Field(discriminator=key)]  # noqa: UP007 (a runtime-built union)
# pragma: no mutate end


class FinetuneBase(Section):
    # Processes for one training run on each node: > 1 runs it under torchrun (the launcher's ngpus).
    nproc: int = Field(1, ge=1, le=1024)
    # Machines it spans: > 1 runs it on that many nodes of the Ray cluster in ``cluster`` (tasks.finetune.nodes).
    nodes: int = Field(1, ge=1, le=256)
    cluster: ClusterSection | None = None

    @model_validator(mode="after")
    def _nodes_have_a_cluster(self) -> "FinetuneBase":
        if self.nodes > 1:
            name = getattr(self, "framework", "")
            able = sorted(n for n, cls in FRAMEWORKS.items() if cls.multinode)
            if not FRAMEWORKS[name].multinode:
                raise ValueError(f"nodes: {self.nodes}: {name} cannot train across nodes yet (those that can: "
                                 f"{', '.join(able)})")
            if self.cluster is None:
                raise ValueError(f"nodes: {self.nodes} needs cluster.address: the Ray cluster to train on "
                                 "(ray://HEAD:10001)")
        return self


FinetuneSection = _sections(FRAMEWORKS, "framework", {}, FinetuneBase)


class EvaluateSection(Section):
    max_samples: int = Field(200, ge=1, le=100_000)
    max_new_tokens: int = Field(32, ge=1, le=512)
    # What counts as the answer in a generation (tasks.evaluate.answers): exact, final_number or text.
    answer: str = "exact"
    gate: GateConfig = GateConfig()

    @field_validator("answer")
    @classmethod
    def known_answer(cls, kind: str) -> str:
        answer_of(kind)  # a ValueError naming the known ones
        return kind


class DeploySettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65_535)  # 0: a free port
    # Every request needs the key in tasks/services/keys.py (Authorization: Bearer ...). Off, the endpoint is open
    # to anyone who can reach it, so it may bind only a loopback address.
    api_key: bool = True
    # How the endpoint's answers are shaped (tasks.formatter): a formatter name and its selector.
    formatter: str = "empty"
    formatter_selector: str | None = None
    # Where the endpoint runs and how its stable URL is kept (tasks.serving.platforms): this machine, or a Ray
    # cluster; FINEFLOW_SERVING when the section gives none.
    serving: ServingSection = Field(default_factory=ServingSection.from_setting)
    # What a version serves: the merged model on an endpoint of its own, or its LoRA adapter on the endpoint its
    # base shares with the other adapters of that base (tasks.serving.adapters), of which at most max_adapters
    # stay in memory (the least recently used is loaded again when asked for).
    serve: Literal["merged", "adapter"] = "merged"
    max_adapters: int = Field(8, ge=1, le=64)
    # Record a share of the version's production requests and answers to the bucket, and take feedback on them
    # (tasks.servers.traffic); None: nothing is recorded.
    traffic: TrafficConfig | None = None

    def engine(self, model_path: str, name: str, prompt_style: str) -> LazyLLMDeployBase:
        """The engine this section asks for, serving ``model_path`` as ``name`` in ``prompt_style``."""
        return engine_for(self.backend, model_path, name, prompt_style, self.host, self.port,  # type: ignore
                          self.params.model_dump())  # type: ignore[attr-defined]

    def relaunch(self, prompt_style: str) -> dict:
        """How to serve a model this way again (an endpoint's record, a version's ``deploy_config`` tag)."""
        return {"deploy": self.model_dump(mode="json"), "prompt_style": prompt_style}

    @model_validator(mode="after")
    def known_formatter(self) -> "DeploySettings":
        make_formatter(self.formatter, self.formatter_selector)  # FormatterError is a ValueError
        return self

    @model_validator(mode="after")
    def adapters_served(self) -> "DeploySettings":
        if self.serve == "merged":
            return self
        engine = ENGINES[getattr(self, "backend", "relay")]
        if not engine.serves_adapters:
            raise ValueError(f"serve: adapter needs an engine that serves LoRA adapters on a shared base ("
                             f"{', '.join(n for n, e in ENGINES.items() if e.serves_adapters)}), not {engine.engine!r}")
        if hasattr(self, "params"):
            self.params = engine.shared_base_params(self.params)
        return self

    @model_validator(mode="after")
    def strangers_kept_out(self) -> "DeploySettings":
        if not self.api_key and self.host not in LOOPBACK:
            raise ValueError(f"host {self.host} with api_key: false would serve anyone who can reach it: keep "
                             "api_key on, or bind 127.0.0.1")
        engine = ENGINES[getattr(self, "backend", "relay")]
        if self.api_key and not engine.supports_api_key(getattr(self, "params", None)):
            raise ValueError(f"deploy engine {engine.engine!r} cannot require an API key: set api_key: false "
                             "(and bind 127.0.0.1)")
        return self


DeploySection = _sections(ENGINES, "backend", {}, DeploySettings)


# Names that become MLflow names, endpoint names and file names: letters, digits, '.', '_', '-'.
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class RegisterSection(Section):
    model_name: str = Field(pattern=NAME)
    alias: str = Field("production", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class PromotionSection(Section):
    # A shadow canary on live traffic before the alias moves (tasks.serving.canary); None: the offline gate alone.
    canary: CanaryConfig | None = None


class PipelineConfig(Section):
    name: str = Field(pattern=NAME)
    experiment: str = Field("fineflow", min_length=1, max_length=200)
    model: ModelSection = ModelSection()
    data: DataSection
    finetune: FinetuneSection
    evaluate: EvaluateSection = EvaluateSection()
    deploy: DeploySection
    registry: RegisterSection
    promotion: PromotionSection = PromotionSection()

    @model_validator(mode="after")
    def canary_and_traffic_where_the_route_does_them(self) -> "PipelineConfig":
        where = platform(self.deploy.serving)
        if self.promotion.canary is not None and not where.mirrors:
            raise ValueError(f"promotion.canary: the {where.name} serving platform cannot copy live requests to a "
                             "candidate yet; use serving.platform: local, or leave promotion.canary out")
        if self.deploy.traffic is not None and not where.records:
            raise ValueError(f"deploy.traffic: the {where.name} serving platform's route cannot record traffic yet; "
                             "use serving.platform: local, or leave deploy.traffic out")
        return self

    @model_validator(mode="after")
    def engine_serves_the_model(self) -> "PipelineConfig":
        """A deploy engine is paired with a model of a type it serves (an embedder is not given to vLLM)."""
        kind = get_model_type(self.model.base_model)
        serves = ENGINES[self.deploy.backend].serves
        if kind not in serves:
            raise ValueError(f"deploy.backend {self.deploy.backend!r} serves {' and '.join(serves)} models; "
                             f"model.base_model {self.model.base_model!r} is a {kind} model")
        measured = MEASURED.get(kind, ())
        if self.evaluate.gate.metric is not None and self.evaluate.gate.metric not in measured:
            raise ValueError(f"evaluate.gate.metric {self.evaluate.gate.metric!r} is not measured for {kind} "
                             f"models; measured: {', '.join(measured)}")
        return self

    @model_validator(mode="before")
    @classmethod
    def default_backends(cls, data: Any) -> Any:
        """``finetune`` and ``deploy`` may be left out, or name no backend: AlpacaLoRA and the relay server."""
        if isinstance(data, dict):
            data = dict(data)
            for section, key, default in (("finetune", "framework", "alpacalora"), ("deploy", "backend", "relay")):
                value = data.get(section) or {}
                if isinstance(value, dict):
                    data[section] = {key: default, **value}
        return data


# Framework parameters that name a file or folder the framework reads.
PATH_PARAMS = ("data_path", "deepspeed", "config_path", "export_config_path")


def load_config(path: str | Path, overrides: dict | None = None) -> PipelineConfig:
    """Read, merge ``overrides`` into, and validate a pipeline YAML; the data path is resolved from the repo root
    and confined to the data roots (``tasks.data.readers.confine``)."""
    config, path = read_config(path, overrides, PipelineConfig), config_file(path)
    try:
        config.data.path = confine(config.data.path)
    except ValueError as e:
        raise ConfigError(f"{path}: data.path: {e}") from None
    params = config.finetune.params
    for name in PATH_PARAMS:  # the files a framework reads: under the data roots, or the repo's DeepSpeed configs
        if value := getattr(params, name, None):
            try:
                setattr(params, name, confine(value, also=(REPO_ROOT / "infra" / "deepspeed",)))
            except ValueError as e:
                raise ConfigError(f"{path}: finetune.{config.finetune.framework}.params.{name}: {e}") from None
    return config
