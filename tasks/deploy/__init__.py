"""Deploy engines (the contract's ``lazyllm.components.deploy``), one module per engine.

``ENGINES`` is the one table of them: a pipeline's ``deploy.backend`` names a row, and
``tasks/config.py`` builds the config's union from it. Adding an engine is a module here (a
``LazyLLMDeployBase`` subclass, see ``base.py``), a line in this table, and, if it needs its
own packages, ``infra/envs/<name>.txt``. The serving engines (vLLM, LMDeploy, Infinity, ...)
come with their own issues.
"""

from tasks.deploy.base import DeployParams, DummyDeploy, LazyLLMDeployBase
from tasks.deploy.relay import RelayServer

ENGINES: dict[str, type[LazyLLMDeployBase]] = {
    "relay": RelayServer,
}


def get_engine(name: str) -> type[LazyLLMDeployBase]:
    if name not in ENGINES:
        raise ValueError(f"unknown deploy engine {name!r}; known: {', '.join(sorted(ENGINES))}")
    return ENGINES[name]


__all__ = ["ENGINES", "DeployParams", "LazyLLMDeployBase", "DummyDeploy", "RelayServer", "get_engine"]
