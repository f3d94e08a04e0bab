"""Deploy engines (the contract's ``lazyllm.components.deploy``), one module per engine: how each serving framework
is started, probed, smoke-tested and read. Engines only: the programs they start are in ``tasks/servers/``, running
endpoints and promotion in ``tasks/serving/``.

``ENGINES`` is the table (``engines.py``) and ``auto``, which chooses among its rows (``auto.py``).
"""

from typing import Any

from tasks.deploy.auto import AutoDeploy
from tasks.deploy.base import DeployParams, DummyDeploy, EngineUnavailableError, LazyLLMDeployBase
from tasks.deploy.embed import EmbeddingDeploy, RerankDeploy
from tasks.deploy.engines import ENGINES as _TABLE
from tasks.deploy.infinity import Infinity, infinity
from tasks.deploy.lightllm import Lightllm
from tasks.deploy.lmdeploy import LMDeploy
from tasks.deploy.media import OCRDeploy, SenseVoiceDeploy, StableDiffusionDeploy, WhisperDeploy
from tasks.deploy.mindie import Mindie
from tasks.deploy.ray import Distributed
from tasks.deploy.relay import RelayServer
from tasks.deploy.tts import BarkDeploy, ChatTTSDeploy, MusicGenDeploy, PiperDeploy, TTSBase, TTSDeploy
from tasks.deploy.vllm import Vllm
from tasks.servers.media.routes import FastapiApp

ENGINES: dict[str, type[LazyLLMDeployBase]] = {**_TABLE, "auto": AutoDeploy}


def vllm(**kw) -> Vllm:
    return Vllm(**kw)


def lmdeploy(**kw) -> LMDeploy:
    return LMDeploy(**kw)


def lightllm(**kw) -> Lightllm:
    return Lightllm(**kw)


def auto(base_model: str, **kw) -> LazyLLMDeployBase:
    return AutoDeploy(base_model, **kw)


def get_engine(name: str) -> type[LazyLLMDeployBase]:
    if name not in ENGINES:
        raise ValueError(f"unknown deploy engine {name!r}; known: {', '.join(sorted(ENGINES))}")
    return ENGINES[name]


def engine_for(backend: str, model_path: str, name: str, prompt_style: str, host: str = "127.0.0.1",
               port: int | None = None, params: dict[str, Any] | None = None) -> LazyLLMDeployBase:
    """The engine a pipeline's deploy section asks for (``backend`` and its ``params``, checked by the engine's own
    ``Params``), serving ``model_path`` as ``name``: what a pipeline starts, and what a restore starts again from
    a version's recorded ``deploy_config``."""
    cls = get_engine(backend)
    checked = cls.Params.model_validate(params or {})
    return cls.for_pipeline(model_path, host=host, port=port or None, name=name, prompt_style=prompt_style,
                            **checked.model_dump())


__all__ = ["AutoDeploy", "BarkDeploy", "ChatTTSDeploy", "DeployParams", "Distributed", "DummyDeploy", "ENGINES",
           "EmbeddingDeploy", "EngineUnavailableError", "FastapiApp", "Infinity", "LMDeploy", "LazyLLMDeployBase",
           "Lightllm", "Mindie", "MusicGenDeploy", "OCRDeploy", "PiperDeploy", "RelayServer", "RerankDeploy",
           "SenseVoiceDeploy", "StableDiffusionDeploy", "TTSBase", "TTSDeploy", "Vllm", "WhisperDeploy", "auto",
           "engine_for", "get_engine", "infinity", "lightllm", "lmdeploy", "vllm"]
