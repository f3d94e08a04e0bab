"""Prompters (the contract's ``lazyllm.components.prompter``).

Only ``Prompter`` is implemented so far; the LazyLLM-style prompters
(``LazyLLMPrompterBase``, ``AlpacaPrompter``, ``ChatPrompter``, ``EmptyPrompter``)
are the subject of their own issue.
"""

from tasks.prompter.prompter import TEMPLATES, Prompter

__all__ = ["Prompter", "TEMPLATES"]
