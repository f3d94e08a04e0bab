"""Finetune backends (the contract's ``lazyllm.components.finetune``), one module per framework.

``FRAMEWORKS`` is the one table of them: a pipeline's ``finetune.framework`` names a row, and
``tasks/config.py`` builds the config's union from it. Adding a framework is a module here (a
``LazyLLMFinetuneBase`` subclass, see ``base.py``), a line in this table, and, if it needs
its own packages, ``infra/envs/<name>.txt``.
"""

from tasks.finetune.alpacalora import AlpacaloraFinetune, alpacalora
from tasks.finetune.auto import AutoFinetune, auto
from tasks.finetune.base import DummyFinetune, FinetuneParams, LazyLLMFinetuneBase
from tasks.finetune.collie import CollieFinetune, collie
from tasks.finetune.flagembedding import FlagembeddingFinetune, flagembedding
from tasks.finetune.llamafactory import LlamafactoryFinetune, llamafactory

FRAMEWORKS: dict[str, type[LazyLLMFinetuneBase]] = {
    "alpacalora": AlpacaloraFinetune,
    "llamafactory": LlamafactoryFinetune,
    "collie": CollieFinetune,  # CUDA GPUs with NCCL only: its preflight refuses elsewhere
    "flagembedding": FlagembeddingFinetune,  # embed and rerank models
    "auto": AutoFinetune,  # chooses one of the others (tasks/finetune/auto.py)
}


def get_framework(name: str) -> type[LazyLLMFinetuneBase]:
    if name not in FRAMEWORKS:
        raise ValueError(f"unknown finetune framework {name!r}; known: {', '.join(sorted(FRAMEWORKS))}")
    return FRAMEWORKS[name]


__all__ = ["FRAMEWORKS", "LazyLLMFinetuneBase", "DummyFinetune", "FinetuneParams", "AlpacaloraFinetune",
           "LlamafactoryFinetune", "CollieFinetune", "FlagembeddingFinetune", "AutoFinetune", "alpacalora",
           "llamafactory", "collie", "flagembedding", "auto",
           "get_framework"]
