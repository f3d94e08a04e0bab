"""Finetune backends (the contract's ``lazyllm.components.finetune``), one module per framework, with the programs
their commands run (``train_lora.py``, ``collie_train.py``, ``merge.py``, ``st_layout.py``).

``FRAMEWORKS`` is the table (``frameworks.py``) and ``auto``, which chooses among its rows (``auto.py``).
"""

from tasks.finetune.alpacalora import AlpacaloraFinetune, alpacalora
from tasks.finetune.auto import AutoFinetune, auto
from tasks.finetune.base import DummyFinetune, FinetuneParams, LazyLLMFinetuneBase
from tasks.finetune.collie import CollieFinetune, collie
from tasks.finetune.flagembedding import FlagembeddingFinetune, flagembedding
from tasks.finetune.frameworks import FRAMEWORKS as _TABLE
from tasks.finetune.llamafactory import LlamafactoryFinetune, llamafactory

FRAMEWORKS: dict[str, type[LazyLLMFinetuneBase]] = {**_TABLE, "auto": AutoFinetune}


def get_framework(name: str) -> type[LazyLLMFinetuneBase]:
    if name not in FRAMEWORKS:
        raise ValueError(f"unknown finetune framework {name!r}; known: {', '.join(sorted(FRAMEWORKS))}")
    return FRAMEWORKS[name]


__all__ = ["FRAMEWORKS", "LazyLLMFinetuneBase", "DummyFinetune", "FinetuneParams", "AlpacaloraFinetune",
           "LlamafactoryFinetune", "CollieFinetune", "FlagembeddingFinetune", "AutoFinetune", "alpacalora",
           "llamafactory", "collie", "flagembedding", "auto",
           "get_framework"]
