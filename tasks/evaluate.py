"""Evaluate base and candidate on the validation split, by model type (``EVALUATORS``): an LLM on loss,
perplexity and greedy exact-match; an embedder or a reranker on retrieval (``tasks.evaluate_retrieval``).

Torch is imported only when scoring (``tasks.inference``), so the config can import the gate's model.
The gate decides whether the candidate may be promoted; the report says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pydantic import BaseModel

from tasks.evaluate_retrieval import RetrievalScores, embedder_set, reranker_set, score_embedder, score_reranker


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


def metrics_of(scores: BaseModel) -> dict[str, float]:
    """The numbers of a score, by name (what MLflow records and the registry's tags carry)."""
    return {k: v for k, v in scores.model_dump().items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"}


class GateConfig(BaseModel):
    metric: str | None = None  # None: the model type's own (exact_match for an LLM, ndcg_at_10 for retrieval)
    min_improvement: float = 0.0  # candidate must beat base by more than this
    min_value: float = 0.0  # and reach at least this


class EvalReport(BaseModel):
    model_type: str = "llm"
    base: ModelScores | RetrievalScores
    candidate: ModelScores | RetrievalScores
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


# The gate's metric when the config names none, by what was measured.
DEFAULT_METRIC: dict[type[BaseModel], str] = {ModelScores: "exact_match", RetrievalScores: "ndcg_at_10"}


LOWER_IS_BETTER = frozenset({"val_loss", "perplexity"})


def beats(metric: str, ours: float, theirs: float, by: float = 0.0) -> bool:
    """Whether a score ``ours`` of ``metric`` improves on ``theirs`` by more than ``by``."""
    return (theirs - ours if metric in LOWER_IS_BETTER else ours - theirs) > by


def resolve_gate(gate: GateConfig, candidate: BaseModel) -> GateConfig:
    """``gate`` with its metric named: the configured one, else the default for what was measured."""
    return gate if gate.metric else gate.model_copy(update={"metric": DEFAULT_METRIC[type(candidate)]})


def apply_gate(base: BaseModel, candidate: BaseModel, gate: GateConfig) -> tuple[bool, str]:
    gate, known = resolve_gate(gate, candidate), metrics_of(candidate)
    if gate.metric not in known:
        raise ValueError(f"evaluate.gate.metric {gate.metric!r} is not measured for this model; measured: "
                         f"{', '.join(known)}")
    b, c = getattr(base, gate.metric), getattr(candidate, gate.metric)
    if not beats(gate.metric, c, b, gate.min_improvement):
        return False, f"{gate.metric}: candidate {c:.4f} does not beat base {b:.4f} by more than {gate.min_improvement}"
    if gate.metric not in LOWER_IS_BETTER and c < gate.min_value:
        return False, f"{gate.metric}: candidate {c:.4f} is below the minimum {gate.min_value}"
    return True, f"{gate.metric}: candidate {c:.4f} vs base {b:.4f}"


def llm_pair(base_path: str, candidate_path: str, records: list[dict], style: str, max_new_tokens: int = 32,
             **_) -> tuple[ModelScores, ModelScores]:
    """Base and candidate on the same prompts, rendered in ``style`` with the candidate's tokenizer (a chat
    template lives beside the model that was trained with it)."""
    from tasks import inference

    prompts = inference.render_prompts(style, records, candidate_path)
    return (score(base_path, records, style, prompts, max_new_tokens),
            score(candidate_path, records, style, prompts, max_new_tokens))


def embedder_pair(base_path: str, candidate_path: str, records: list[dict], all_records: list[dict] = (),
                  **_) -> tuple[RetrievalScores, RetrievalScores]:
    judged = embedder_set(records, [*all_records, *records])
    return score_embedder(base_path, judged), score_embedder(candidate_path, judged)


def reranker_pair(base_path: str, candidate_path: str, records: list[dict], **_
                  ) -> tuple[RetrievalScores, RetrievalScores]:
    judged = reranker_set(records)
    return score_reranker(base_path, judged), score_reranker(candidate_path, judged)


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
             max_new_tokens: int = 32, *, model_type: str = "llm", all_records: list[dict] = ()) -> EvalReport:
    """Score base and candidate with the model type's evaluator and apply the gate (its metric defaulting to the
    type's). ``all_records`` (the training split) widen an embedder's corpus to every passage of the dataset."""
    if model_type not in EVALUATORS:
        raise ValueError(f"no evaluation for {model_type} models; evaluated: {', '.join(EVALUATORS)}")
    base, candidate = EVALUATORS[model_type](base_path, candidate_path, records, style=style,
                                             max_new_tokens=max_new_tokens, all_records=all_records)
    gate = resolve_gate(gate, candidate)
    passed, reason = apply_gate(base, candidate, gate)
    return EvalReport(model_type=model_type, base=base, candidate=candidate, gate=gate, passed=passed, reason=reason)
