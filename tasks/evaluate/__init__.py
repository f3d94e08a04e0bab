"""Evaluate base and candidate on the validation split, by model type (``EVALUATORS``): an LLM on loss,
perplexity and greedy exact-match (``llm.py``); an embedder or a reranker on retrieval (``retrieval.py``). The
gate (``gate.py``) decides whether the candidate may be promoted; the report says why. Validating a config
imports the gate's model only: no torch.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from tasks.evaluate.gate import GateConfig, apply_gate, beats, metrics_of, resolve_gate
from tasks.evaluate.llm import ModelScores, llm_pair, perplexity, score
from tasks.evaluate.retrieval import RetrievalScores, embedder_pair, reranker_pair


class EvalReport(BaseModel):
    model_type: str = "llm"
    base: ModelScores | RetrievalScores
    candidate: ModelScores | RetrievalScores
    gate: GateConfig
    passed: bool
    reason: str


# model type -> the metrics its evaluator measures (what evaluate.gate.metric may name; checked with the config)
MEASURED: dict[str, tuple[str, ...]] = {
    "llm": ("exact_match", "val_loss", "perplexity"), "vlm": ("exact_match", "val_loss", "perplexity"),
    "embed": ("recall_at_1", "recall_at_5", "recall_at_10", "mrr_at_10", "ndcg_at_10"),
    "rerank": ("mrr_at_10", "ndcg_at_10"),
}

# model type -> how base and candidate are scored
EVALUATORS: dict[str, Callable[..., tuple[BaseModel, BaseModel]]] = {
    "llm": llm_pair, "vlm": llm_pair, "embed": embedder_pair, "rerank": reranker_pair,
}


def evaluate(base_path: str, candidate_path: str, records: list[dict], gate: GateConfig, style: str,
             max_new_tokens: int = 32, *, model_type: str = "llm", all_records: list[dict] = (),
             answer: str = "exact") -> EvalReport:
    """Score base and candidate with the model type's evaluator and apply the gate (its metric defaulting to the
    type's). ``all_records`` (the training split) widen an embedder's corpus to every passage of the dataset."""
    if model_type not in EVALUATORS:
        raise ValueError(f"no evaluation for {model_type} models; evaluated: {', '.join(EVALUATORS)}")
    base, candidate = EVALUATORS[model_type](base_path, candidate_path, records, style=style,
                                             max_new_tokens=max_new_tokens, all_records=all_records,
                                             answer=answer)
    gate = resolve_gate(gate, candidate)
    passed, reason = apply_gate(base, candidate, gate)
    return EvalReport(model_type=model_type, base=base, candidate=candidate, gate=gate, passed=passed, reason=reason)


__all__ = ["EVALUATORS", "EvalReport", "GateConfig", "MEASURED", "ModelScores", "RetrievalScores", "apply_gate",
           "beats", "evaluate", "metrics_of", "perplexity", "resolve_gate", "score"]
