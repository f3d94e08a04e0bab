"""The table of finetune frameworks: a pipeline's ``finetune.framework`` names a row; ``tasks/pipeline/config.py``
builds the config's union from it, and ``AutoFinetune`` chooses among its rows by the facts each declares.

Adding a framework is a module in this folder (a ``LazyLLMFinetuneBase`` subclass, see ``base.py``), a line here,
and, if it needs its own packages, ``infra/envs/<name>.txt``. ``tests/unit/test_registries.py`` keeps this table
and the modules in step.
"""

from tasks.finetune.alpacalora import AlpacaloraFinetune
from tasks.finetune.base import LazyLLMFinetuneBase
from tasks.finetune.collie import CollieFinetune
from tasks.finetune.flagembedding import FlagembeddingFinetune
from tasks.finetune.llamafactory import LlamafactoryFinetune

FRAMEWORKS: dict[str, type[LazyLLMFinetuneBase]] = {
    "alpacalora": AlpacaloraFinetune,
    "llamafactory": LlamafactoryFinetune,
    "collie": CollieFinetune,  # CUDA GPUs with NCCL only: its preflight refuses elsewhere
    "flagembedding": FlagembeddingFinetune,  # embed and rerank models
}
