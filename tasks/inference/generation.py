"""Tokens in and out of a causal LM: training examples with the prompt masked out of the labels, loading, greedy
generation and the response loss. Torch and transformers are imported only when a function needs them."""

from __future__ import annotations

from tasks.inference.prompts import load_tokenizer, model_text

IGNORE = -100  # label of a token that does not count in the loss


def encode_example(tokenizer, style: str, prompt: str, output: str, cutoff_len: int | None = None,
                   train_on_inputs: bool = False) -> dict[str, list[int]]:
    """Token ids and labels of prompt + output + EOS; prompt tokens are masked out of the labels unless
    ``train_on_inputs``. Training and the validation loss both use this."""
    head = model_text(tokenizer, style, prompt)
    prompt_ids = tokenizer(head, add_special_tokens=False).input_ids
    ids = tokenizer(head + output + tokenizer.eos_token, add_special_tokens=False).input_ids
    if cutoff_len:
        ids = ids[:cutoff_len]
    labels = list(ids)
    if not train_on_inputs:
        labels[: len(prompt_ids)] = [IGNORE] * min(len(prompt_ids), len(labels))
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def load_model(path: str):
    """A causal LM and its tokenizer, in float32 on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, tokenizer


def context_len(model) -> int:
    """The most tokens the model reads at once (its position embeddings); what evaluation truncates to."""
    return int(getattr(model.config, "max_position_embeddings", None) or 2048)


def generate(model, tokenizer, prompts: list[str], style: str, max_new_tokens: int = 32,
             batch_size: int = 32) -> list[str]:
    """Greedy completions of ``prompts`` (rendered prompt texts in ``style``)."""
    import torch

    outputs: list[str] = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            batch = [model_text(tokenizer, style, p) for p in prompts[i:i + batch_size]]
            # The prompt's end is kept: what the model answers from; the rest is cut to fit its context.
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False, truncation=True,
                            max_length=max(1, context_len(model) - max_new_tokens))
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            outputs += tokenizer.batch_decode(gen[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return outputs


def response_loss(model, tokenizer, style: str, prompts: list[str], outputs: list[str]) -> float:
    """Mean cross-entropy over the response tokens (output + EOS) given their prompts; prompt tokens do not count."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for prompt, output in zip(prompts, outputs):
            enc, keep = encode_example(tokenizer, style, prompt, output), context_len(model)
            # As generation does, the prompt's head is what gives way to fit the context; the response stays.
            ids, labels = torch.tensor([enc["input_ids"][-keep:]]), torch.tensor([enc["labels"][-keep:]])
            n = int((labels[:, 1:] != IGNORE).sum())  # the loss is over shifted labels; EOS always counts
            total += model(input_ids=ids, labels=labels).loss.item() * n
            count += n
    return total / max(count, 1)
