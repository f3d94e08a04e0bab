"""Retrieval evaluation of embedders and rerankers: recall@k, MRR@10 and nDCG@10 of base and candidate.

- Embedder: every held-out query ranks the whole corpus (every passage of the dataset, train and validation)
  by cosine similarity; its ``pos`` passages are the relevant ones.
- Reranker: every held-out query's candidate list (its ``pos`` and ``neg`` passages, or its labelled pairs) is
  reordered by the cross-encoder's score; labels of at least 0.5 are relevant.

The metric functions are plain numpy on rankings (tested against hand-worked cases); the models are loaded
with sentence-transformers only when scoring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel

KS = (1, 5, 10)
RELEVANT_LABEL = 0.5


class RetrievalScores(BaseModel):
    model_path: str
    n: int  # held-out queries
    recall_at_1: float | None = None
    recall_at_5: float | None = None
    recall_at_10: float | None = None
    mrr_at_10: float
    ndcg_at_10: float
    samples: list[dict] = []  # a few queries with what ranked first, for the report


def recall_at(ranking: Sequence[int], relevant: set[int], k: int) -> float:
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def mrr_at(ranking: Sequence[int], relevant: set[int], k: int = 10) -> float:
    return next((1 / (i + 1) for i, doc in enumerate(ranking[:k]) if doc in relevant), 0.0)


def ndcg_at(ranking: Sequence[int], relevant: set[int], k: int = 10) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, doc in enumerate(ranking[:k]) if doc in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal


def mean_metrics(rankings: list[Sequence[int]], relevant: list[set[int]], with_recall: bool = True) -> dict:
    """The mean of each metric over queries; a query with nothing relevant is a caller's error."""
    if not rankings or any(not r for r in relevant):
        raise ValueError("every query needs at least one relevant passage")
    n = len(rankings)
    out = {"mrr_at_10": sum(mrr_at(r, s) for r, s in zip(rankings, relevant)) / n,
           "ndcg_at_10": sum(ndcg_at(r, s) for r, s in zip(rankings, relevant)) / n}
    if with_recall:
        out.update({f"recall_at_{k}": sum(recall_at(r, s, k) for r, s in zip(rankings, relevant)) / n for k in KS})
    return out


class Judged(BaseModel):
    """Held-out queries with what they are judged against."""

    queries: list[str]
    corpus: list[str]  # embedder: the passages every query ranks
    relevant: list[set[int]]  # per query: indices into corpus (embedder) or into its candidates (reranker)
    candidates: list[list[str]] = []  # reranker: each query's own list


def embedder_set(val_records: list[dict], all_records: list[dict]) -> Judged:
    """Triplets: the corpus is every passage of the dataset; a query's ``pos`` are relevant."""
    corpus = list(dict.fromkeys(p for r in all_records for p in [*r["pos"], *r.get("neg", [])]))
    index = {p: i for i, p in enumerate(corpus)}
    return Judged(queries=[r["query"] for r in val_records], corpus=corpus,
                  relevant=[{index[p] for p in r["pos"]} for r in val_records])


def reranker_set(val_records: list[dict]) -> Judged:
    """Triplets (``pos`` + ``neg``) or rerank pairs grouped by query; queries with no relevant passage are left
    out (nothing to find)."""
    groups: dict[str, dict[str, float]] = {}
    for r in val_records:
        group = groups.setdefault(r["query"], {})
        if "passage" in r:
            group[r["passage"]] = r["label"]
        else:
            group.update({p: 0.0 for p in r.get("neg", [])} | {p: 1.0 for p in r["pos"]})
    kept = {q: g for q, g in groups.items() if any(v >= RELEVANT_LABEL for v in g.values())}
    return Judged(queries=list(kept), corpus=[], candidates=[list(g) for g in kept.values()],
                  relevant=[{i for i, v in enumerate(g.values()) if v >= RELEVANT_LABEL} for g in kept.values()])


def score_embedder(model_path: str, judged: Judged, batch_size: int = 64) -> RetrievalScores:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    q = model.encode(judged.queries, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    c = model.encode(judged.corpus, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    rankings = [list(row) for row in (-(q @ c.T)).argsort(axis=1)[:, :max(KS)]]
    samples = [{"query": judged.queries[i], "first": judged.corpus[rankings[i][0]],
                "hit": rankings[i][0] in judged.relevant[i]} for i in range(min(5, len(rankings)))]
    return RetrievalScores(model_path=model_path, n=len(rankings), samples=samples,
                           **mean_metrics(rankings, judged.relevant))


def score_reranker(model_path: str, judged: Judged, batch_size: int = 64) -> RetrievalScores:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(model_path, device="cpu")
    pairs = [(q, p) for q, cands in zip(judged.queries, judged.candidates) for p in cands]
    flat = list(model.predict(pairs, batch_size=batch_size, convert_to_numpy=True))
    rankings, start = [], 0
    for cands in judged.candidates:
        scores = flat[start:start + len(cands)]
        start += len(cands)
        rankings.append(sorted(range(len(cands)), key=lambda i: -scores[i]))
    samples = [{"query": judged.queries[i], "first": judged.candidates[i][rankings[i][0]],
                "hit": rankings[i][0] in judged.relevant[i]} for i in range(min(5, len(rankings)))]
    return RetrievalScores(model_path=model_path, n=len(rankings), samples=samples,
                           **mean_metrics(rankings, judged.relevant, with_recall=False))


def embedder_pair(base_path: str, candidate_path: str, records: list[dict], all_records: list[dict] = (),
                  **_) -> tuple[RetrievalScores, RetrievalScores]:
    judged = embedder_set(records, [*all_records, *records])
    return score_embedder(base_path, judged), score_embedder(candidate_path, judged)


def reranker_pair(base_path: str, candidate_path: str, records: list[dict], **_
                  ) -> tuple[RetrievalScores, RetrievalScores]:
    judged = reranker_set(records)
    return score_reranker(base_path, judged), score_reranker(candidate_path, judged)
