"""Evaluate base and candidate on the validation split: loss, perplexity, greedy exact-match.

The gate decides whether the candidate may be promoted; the report says why.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel


class ModelScores(BaseModel):
    model_path: str
    n: int
    exact_match: float
    val_loss: float
    perplexity: float
    samples: list[dict[str, str]] = []  # a few (prompt tail, expected, got) rows for the report


class GateConfig(BaseModel):
    metric: str = "exact_match"
    min_improvement: float = 0.0  # candidate must beat base by more than this
    min_value: float = 0.0  # and reach at least this


class EvalReport(BaseModel):
    base: ModelScores
    candidate: ModelScores
    gate: GateConfig
    passed: bool
    reason: str


def _load(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, tokenizer


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 32) -> list[str]:
    """Greedy completions of ``prompts`` (each prefixed with BOS, as in training)."""
    outputs = []
    for i in range(0, len(prompts), batch_size):
        batch = [tokenizer.bos_token + p for p in prompts[i:i + batch_size]]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        outputs += tokenizer.batch_decode(gen[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return outputs


@torch.no_grad()
def response_loss(model, tokenizer, records: list[dict]) -> float:
    """Mean token cross-entropy of the expected outputs given their prompts."""
    total, count = 0.0, 0
    for r in records:
        prompt_ids = tokenizer(tokenizer.bos_token + r["prompt"], add_special_tokens=False).input_ids
        ids = tokenizer(tokenizer.bos_token + r["prompt"] + r["output"] + tokenizer.eos_token,
                        add_special_tokens=False, return_tensors="pt").input_ids
        labels = ids.clone()
        labels[:, : len(prompt_ids)] = -100
        n = int((labels != -100).sum()) - 1
        total += model(input_ids=ids, labels=labels).loss.item() * n
        count += n
    return total / max(count, 1)


def score(model_path: str, records: list[dict], max_new_tokens: int = 32) -> ModelScores:
    model, tokenizer = _load(model_path)
    got = generate(model, tokenizer, [r["prompt"] for r in records], max_new_tokens)
    hits = [g.strip() == r["output"].strip() for g, r in zip(got, records)]
    loss = response_loss(model, tokenizer, records)
    samples = [{"instruction": r.get("instruction", ""), "input": r.get("input", ""), "expected": r["output"],
                "got": g.strip()} for r, g in zip(records[:5], got[:5])]
    return ModelScores(model_path=model_path, n=len(records), exact_match=sum(hits) / max(len(hits), 1),
                       val_loss=loss, perplexity=math.exp(min(loss, 50)), samples=samples)


def apply_gate(base: ModelScores, candidate: ModelScores, gate: GateConfig) -> tuple[bool, str]:
    b, c = getattr(base, gate.metric), getattr(candidate, gate.metric)
    lower_is_better = gate.metric in ("val_loss", "perplexity")
    improvement = (b - c) if lower_is_better else (c - b)
    if improvement <= gate.min_improvement:
        return False, f"{gate.metric}: candidate {c:.4f} does not beat base {b:.4f} by more than {gate.min_improvement}"
    if not lower_is_better and c < gate.min_value:
        return False, f"{gate.metric}: candidate {c:.4f} is below the minimum {gate.min_value}"
    return True, f"{gate.metric}: candidate {c:.4f} vs base {b:.4f}"


def evaluate(base_path: str, candidate_path: str, records: list[dict], gate: GateConfig,
             max_new_tokens: int = 32) -> EvalReport:
    base = score(base_path, records, max_new_tokens)
    candidate = score(candidate_path, records, max_new_tokens)
    passed, reason = apply_gate(base, candidate, gate)
    return EvalReport(base=base, candidate=candidate, gate=gate, passed=passed, reason=reason)
