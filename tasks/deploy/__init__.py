"""Deploy backends (the contract's ``lazyllm.components.deploy``).

Implemented: ``LazyLLMDeployBase`` and fineflow's built-in ``RelayServer``; the
serving engines (vLLM, LMDeploy, Infinity, ...) come with their own issues.
"""

from tasks.deploy.base import LazyLLMDeployBase, RelayServer

__all__ = ["LazyLLMDeployBase", "RelayServer"]
