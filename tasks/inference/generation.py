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


def load_model(path: str, device: str = "cpu"):
    """A causal LM and its tokenizer, in float32 on ``device`` (the CPU unless a server asks for a GPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
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


def loss_batches(rows: list[tuple[list[int], list[int]]], max_tokens: int) -> list[list[tuple[list[int], list[int]]]]:
    """Consecutive rows grouped so that each group, padded to its longest, holds at most ``max_tokens`` tokens (a
    row longer than that alone): the logits of a batch grow with tokens times the vocabulary."""
    batches: list[list] = []
    for row in rows:
        if batches and (len(batches[-1]) + 1) * max(len(row[0]), *(len(r[0]) for r in batches[-1])) <= max_tokens:
            batches[-1].append(row)
        else:
            batches.append([row])
    return batches


def response_loss(model, tokenizer, style: str, prompts: list[str], outputs: list[str],
                  max_tokens: int = 2048) -> float:
    """Mean cross-entropy over the response tokens (output + EOS) given their prompts; prompt tokens do not count.
    Records are scored in batches of at most ``max_tokens`` tokens, right-padded (padding neither attends nor
    counts)."""
    import torch
    import torch.nn.functional as F

    total, count, keep = 0.0, 0, context_len(model)
    # As generation does, the prompt's head is what gives way to fit the context; the response stays.
    encoded = [(e["input_ids"][-keep:], e["labels"][-keep:])
               for e in (encode_example(tokenizer, style, p, o) for p, o in zip(prompts, outputs))]
    with torch.inference_mode():
        for rows in loss_batches(encoded, max_tokens):
            width = max(len(ids) for ids, _ in rows)
            ids = torch.tensor([r + [tokenizer.pad_token_id or 0] * (width - len(r)) for r, _ in rows])
            labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]  # the loss is over shifted labels; EOS always counts
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE,
                                     reduction="sum").item()
            count += int((target != IGNORE).sum())
    return total / max(count, 1)
