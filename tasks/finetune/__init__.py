"""Finetune backends (the contract's ``lazyllm.components.finetune``).

Implemented: ``LazyLLMFinetuneBase``, ``DummyFinetune``, ``AlpacaloraFinetune``.
The other frameworks (Collie, LLaMA-Factory, FlagEmbedding, Auto) come with their own issues.
"""

from tasks.finetune.alpacalora import AlpacaloraFinetune, alpacalora
from tasks.finetune.base import DummyFinetune, LazyLLMFinetuneBase

__all__ = ["LazyLLMFinetuneBase", "DummyFinetune", "AlpacaloraFinetune", "alpacalora"]
