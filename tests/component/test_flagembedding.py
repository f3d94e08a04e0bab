"""FlagEmbedding really trains (two processes under torchrun, in its own environment, as one run), and the
retrieval evaluators rank as the embedded models score, computed here independently."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from infra.embed_models import EMBED, RERANK
from tasks import envs, launchers
from tasks.evaluate.retrieval import reranker_set
from tasks.finetune import FlagembeddingFinetune
from tasks.models.local import EMBEDDED_MODELS


def test_two_processes_train_as_one_under_torchrun(tmp_path):
    """FlagEmbedding itself under torchrun, 2 CPU processes (gloo), with cross-device negatives: one run whose
    epochs go twice as fast (each process takes half the data), logged once, saved once."""
    data = json.loads((EMBEDDED_MODELS.parent / "datasets" / "company_facts.json").read_text())[:64]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in data))
    t = FlagembeddingFinetune(EMBED, str(tmp_path / "out"), launcher=launchers.remote(ngpus=2), max_steps=2,
                              query_instruction_for_retrieval="", train_group_size=2, query_max_len=16,
                              passage_max_len=32, per_device_train_batch_size=4, gradient_checkpointing=False)
    command = t.train_command(str(train))
    assert "--negatives_cross_device" in command.argvs[0]
    envs.ensure(t.environment)
    out = subprocess.run(command.argvs[0], env={**os.environ, **command.env}, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    logs = [t.parse_metrics(line) for line in (out.stdout + out.stderr).splitlines()]
    steps = [m for m in logs if m and "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]  # rank 0 logs; the other process does not
    assert steps[0]["epoch"] == pytest.approx(1 / 8)  # 64 records / (4 per process x 2 processes) = 8 steps
    assert (tmp_path / "out" / "embed" / "model.safetensors").is_file()


def test_the_evaluators_rank_as_the_models_score_computed_here_independently(tmp_path):
    """score_embedder / score_reranker against the same models' scores computed in the test: the positive's rank
    under cosine similarity (embedder, whole corpus) and under the cross-encoder (reranker, its candidates)."""
    import numpy as np
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from tasks.evaluate.retrieval import embedder_pair, embedder_set, reranker_pair, score_embedder, score_reranker

    data = json.loads((EMBEDDED_MODELS.parent / "datasets" / "company_facts.json").read_text())
    val, rest = data[:12], data[12:40]
    judged = embedder_set(val, rest + val)
    got = score_embedder(str(EMBEDDED_MODELS / EMBED), judged)
    model = SentenceTransformer(str(EMBEDDED_MODELS / EMBED), device="cpu")
    q, c = model.encode(judged.queries), model.encode(judged.corpus)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T
    ranks = [1 + int((row > row[judged.corpus.index(r["pos"][0])]).sum()) for row, r in zip(sims, val)]
    assert got.n == 12 and len(judged.corpus) == len({p for r in rest + val for p in [*r["pos"], *r["neg"]]})
    assert got.recall_at_1 == pytest.approx(sum(k == 1 for k in ranks) / 12)
    assert got.mrr_at_10 == pytest.approx(sum(1 / k for k in ranks if k <= 10) / 12)
    assert got.ndcg_at_10 == pytest.approx(sum(1 / np.log2(k + 1) for k in ranks if k <= 10) / 12)
    assert got.recall_at_10 == pytest.approx(sum(k <= 10 for k in ranks) / 12)
    assert 0 < got.recall_at_1 < 1  # the base confuses some queries: a set where ranking matters
    assert got.model_path == str(EMBEDDED_MODELS / EMBED)
    best = [int(row.argmax()) for row in sims]
    assert got.samples == [{"query": judged.queries[i], "first": judged.corpus[best[i]],
                            "hit": judged.corpus[best[i]] in val[i]["pos"]} for i in range(5)]
    # A model without a Normalize layer is still ranked by cosine similarity, not by the dot product of its raw
    # embeddings (which here orders some query's passages differently: the check can fail).
    raw = tmp_path / "no-normalize"
    raw.mkdir()
    for f in (EMBEDDED_MODELS / EMBED).iterdir():
        (raw / f.name).symlink_to(f)
    (raw / "modules.json").unlink()
    modules = json.loads((EMBEDDED_MODELS / EMBED / "modules.json").read_text())
    (raw / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))
    unnormalized = SentenceTransformer(str(raw), device="cpu")
    dots = unnormalized.encode(judged.queries) @ unnormalized.encode(judged.corpus).T
    assert any(list((-d).argsort()[:10]) != list((-s).argsort()[:10]) for d, s in zip(dots, sims))
    assert score_embedder(str(raw), judged).model_copy(update={"model_path": got.model_path}) == got
    # The pair the gate compares: base and candidate scored on the same judged set (the records joined to the rest
    # for the corpus).
    base, candidate = embedder_pair(str(EMBEDDED_MODELS / EMBED), str(EMBEDDED_MODELS / EMBED), val, rest)
    assert base == candidate == got

    rr = reranker_set(val[:6])
    got = score_reranker(str(EMBEDDED_MODELS / RERANK), rr)
    cross = CrossEncoder(str(EMBEDDED_MODELS / RERANK), device="cpu")
    ranks = []
    for query, cands, rel in zip(rr.queries, rr.candidates, rr.relevant):
        scores = cross.predict([(query, d) for d in cands])
        ranks.append(1 + int((scores > scores[next(iter(rel))]).sum()))
    assert got.mrr_at_10 == pytest.approx(sum(1 / k for k in ranks if k <= 10) / 6)
    assert got.recall_at_1 is None and got.n == 6
    assert got.ndcg_at_10 == pytest.approx(sum(1 / np.log2(k + 1) for k in ranks if k <= 10) / 6)
    firsts = [int(np.argmax(cross.predict([(query, d) for d in cands]))) for query, cands in zip(rr.queries,
                                                                                                  rr.candidates)]
    assert got.samples == [{"query": rr.queries[i], "first": rr.candidates[i][firsts[i]],
                            "hit": firsts[i] in rr.relevant[i]} for i in range(5)]
    assert reranker_pair(str(EMBEDDED_MODELS / RERANK), str(EMBEDDED_MODELS / RERANK), val[:6]) == (got, got)
    # One positive against one negative: a sample's "hit" is whether the positive ranked first, so it differs from
    # whether the second-ranked passage is relevant in every query.
    pairs = reranker_set([{**r, "neg": r["neg"][:1]} for r in val[:6]])
    hits = [s["hit"] for s in score_reranker(str(EMBEDDED_MODELS / RERANK), pairs).samples]
    assert hits == [bool(cross.predict([(q, c[1])])[0] > cross.predict([(q, c[0])])[0])  # c: [negative, positive]
                    for q, c in zip(pairs.queries[:5], pairs.candidates[:5])]
