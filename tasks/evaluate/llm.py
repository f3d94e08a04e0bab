"""An LLM scored on the validation split: greedy exact-match, the response loss (prompt tokens masked) and
perplexity, prompted in the candidate's prompt style. Torch is imported only when scoring (``tasks.inference``)."""

from __future__ import annotations

import math

from pydantic import BaseModel

from tasks.evaluate.answers import answer_of

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


def score(model_path: str, records: list[dict], style: str, prompts: list[str] | None = None,
          max_new_tokens: int = 32, answer: str = "exact") -> ModelScores:
    """Greedy exact-match (of the answers ``answer`` extracts: ``tasks.evaluate.answers``) and response loss of one
    model; ``prompts`` default to ``records`` rendered in ``style``."""
    from tasks import inference  # torch, only when scoring

    extract = answer_of(answer)
    model, tokenizer = inference.load_model(model_path)
    examples = [inference.example(r) for r in records]
    prompts = prompts or inference.render_prompts(style, records, model_path)
    got = inference.generate(model, tokenizer, prompts, style, max_new_tokens)
    hits = [extract(g) == extract(ex["output"]) for g, ex in zip(got, examples)]
    loss = inference.response_loss(model, tokenizer, style, prompts, [ex["output"] for ex in examples])
    samples = [{"instruction": ex["instruction"], "input": ex["input"], "expected": ex["output"], "got": g.strip(),
                "answer": extract(g)} for ex, g in zip(examples[:5], got[:5])]
    return ModelScores(model_path=model_path, n=len(records), exact_match=sum(hits) / max(len(hits), 1),
                       val_loss=loss, perplexity=perplexity(loss), samples=samples)


def llm_pair(base_path: str, candidate_path: str, records: list[dict], style: str, max_new_tokens: int = 32,
             answer: str = "exact", **_) -> tuple[ModelScores, ModelScores]:
    """Base and candidate on the same prompts, rendered in ``style`` with the candidate's tokenizer (a chat
    template lives beside the model that was trained with it)."""
    from tasks import inference

    prompts = inference.render_prompts(style, records, candidate_path)
    return (score(base_path, records, style, prompts, max_new_tokens, answer),
            score(candidate_path, records, style, prompts, max_new_tokens, answer))
