"""Prompts in, tokens out: written once for training, evaluation and serving.

A *prompt style* says how a record becomes the text a model sees, and so must be the same
when the model is trained, evaluated and served:

- a prompter name (``alpaca``, ``lazyllm_chat``, ...; ``tasks.prompter.get_prompter``): the
  record is rendered by that prompter and the model's BOS token is put in front, as
  ``AlpacaloraFinetune`` trains;
- ``chat_template``: the record becomes chat messages rendered by the tokenizer's own chat
  template, which carries its special tokens itself (what LLaMA-Factory trains with and
  saves beside the model it exports).

The response is the target in both: ``output`` followed by EOS.
"""

from tasks.inference.generation import (IGNORE, context_len, encode_example, generate, load_model, load_tokenizer,
                                        response_loss)
from tasks.inference.prompts import (CHAT_TEMPLATE, chat_template, check_style, example, messages, model_text,
                                     render_prompt, render_prompts, renderer)

__all__ = ["CHAT_TEMPLATE", "IGNORE", "chat_template", "check_style", "context_len", "encode_example", "example",
           "generate", "load_model", "load_tokenizer", "messages", "model_text", "render_prompt", "render_prompts",
           "renderer", "response_loss"]
