"""Deploy backends (the contract's ``lazyllm.components.deploy``).

Implemented: ``LazyLLMDeployBase``, ``DummyDeploy`` and fineflow's built-in ``RelayServer``; the
serving engines (vLLM, LMDeploy, Infinity, ...) come with their own issues.
"""

from tasks.deploy.base import DummyDeploy, LazyLLMDeployBase, RelayServer

__all__ = ["LazyLLMDeployBase", "DummyDeploy", "RelayServer"]
