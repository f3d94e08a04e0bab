"""The gate: whether a candidate may be promoted over the base (or over a version promoted meanwhile), and why."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.evaluate.llm import ModelScores
from tasks.evaluate.retrieval import RetrievalScores


def metrics_of(scores: BaseModel) -> dict[str, float]:
    """The numbers of a score, by name (what MLflow records and the registry's tags carry)."""
    return {k: v for k, v in scores.model_dump().items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"}


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str | None = None  # None: the model type's own (exact_match for an LLM, ndcg_at_10 for retrieval)
    min_improvement: float = Field(0.0, allow_inf_nan=False)  # candidate must beat base by more than this
    min_value: float = Field(0.0, allow_inf_nan=False)  # and reach at least this
    allow_regression: bool = False  # a negative min_improvement: a candidate up to that much worse passes

    @model_validator(mode="after")
    def _cannot_defeat_itself(self) -> "GateConfig":
        if self.min_improvement < 0 and not self.allow_regression:
            raise ValueError(f"min_improvement {self.min_improvement} lets a candidate worse than the base through; "
                             "set allow_regression: true if that is meant")
        return self


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
