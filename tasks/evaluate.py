"""Evaluate base and candidate on the validation split: loss, perplexity, greedy exact-match.

Torch is imported only when scoring (``tasks.inference``), so the config can import the gate's model.
The gate decides whether the candidate may be promoted; the report says why.
"""

from __future__ import annotations

import math

from pydantic import BaseModel


# A loss above this is a broken model; capping keeps exp() finite and the report readable.
MAX_LOSS_FOR_PERPLEXITY = 50.0


def perplexity(loss: float) -> float:
    return math.exp(min(loss, MAX_LOSS_FOR_PERPLEXITY))


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


def score(model_path: str, records: list[dict], style: str, prompts: list[str] | None = None,
          max_new_tokens: int = 32) -> ModelScores:
    """Greedy exact-match and response loss of one model; ``prompts`` default to ``records`` rendered in ``style``."""
    from tasks import inference

    model, tokenizer = inference.load_model(model_path)
    examples = [inference.example(r) for r in records]
    prompts = prompts or inference.render_prompts(style, records, model_path)
    got = inference.generate(model, tokenizer, prompts, style, max_new_tokens)
    hits = [g.strip() == ex["output"].strip() for g, ex in zip(got, examples)]
    loss = inference.response_loss(model, tokenizer, style, prompts, [ex["output"] for ex in examples])
    samples = [{"instruction": ex["instruction"], "input": ex["input"], "expected": ex["output"], "got": g.strip()}
               for ex, g in zip(examples[:5], got[:5])]
    return ModelScores(model_path=model_path, n=len(records), exact_match=sum(hits) / max(len(hits), 1),
                       val_loss=loss, perplexity=perplexity(loss), samples=samples)


def apply_gate(base: ModelScores, candidate: ModelScores, gate: GateConfig) -> tuple[bool, str]:
    b, c = getattr(base, gate.metric), getattr(candidate, gate.metric)
    lower_is_better = gate.metric in ("val_loss", "perplexity")
    improvement = (b - c) if lower_is_better else (c - b)
    if improvement <= gate.min_improvement:
        return False, f"{gate.metric}: candidate {c:.4f} does not beat base {b:.4f} by more than {gate.min_improvement}"
    if not lower_is_better and c < gate.min_value:
        return False, f"{gate.metric}: candidate {c:.4f} is below the minimum {gate.min_value}"
    return True, f"{gate.metric}: candidate {c:.4f} vs base {b:.4f}"


def evaluate(base_path: str, candidate_path: str, records: list[dict], gate: GateConfig, style: str,
             max_new_tokens: int = 32) -> EvalReport:
    """Score base and candidate on the same prompts, rendered in ``style`` with the candidate's tokenizer (a chat
    template lives beside the model that was trained with it), and apply the gate."""
    from tasks import inference

    prompts = inference.render_prompts(style, records, candidate_path)
    base = score(base_path, records, style, prompts, max_new_tokens)
    candidate = score(candidate_path, records, style, prompts, max_new_tokens)
    passed, reason = apply_gate(base, candidate, gate)
    return EvalReport(base=base, candidate=candidate, gate=gate, passed=passed, reason=reason)
