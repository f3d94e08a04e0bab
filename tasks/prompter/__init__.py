"""Prompters (the contract's ``lazyllm.components.prompter``).

``Prompter`` is the plain template prompter (alpaca-lora templates); the
LazyLLM-style prompters build the system prompt, instruction, tools and
history into a model layout. ``get_prompter(name)`` is how the pipeline
picks one by ``prompt_template_name``.
"""

from tasks.prompter.alpaca import AlpacaPrompter
from tasks.prompter.base import EmptyPrompter, LazyLLMPrompterBase, PrompterError
from tasks.prompter.chat import ChatPrompter
from tasks.prompter.prompter import TEMPLATES, Prompter
from tasks.prompter.registry import PROMPTERS, get_prompter, render_record

__all__ = ["LazyLLMPrompterBase", "EmptyPrompter", "Prompter", "AlpacaPrompter", "ChatPrompter", "PrompterError",
           "TEMPLATES", "PROMPTERS", "get_prompter", "render_record"]
