"""The retrieval pipelines end to end on the real local stack, through the Prefect worker:
``finetune/flagembedding`` (MiniLM embedder -> built-in /v1/embeddings) and ``finetune/flagembedding-rerank``
(MiniLM cross-encoder -> Infinity /rerank). FlagEmbedding really trains (its own environment, CPU), retrieval
is measured for base and candidate, the endpoint is registered and promoted only past the gate.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import httpx
import openai
import pytest

from tasks.deploy.embed import cosine
from tasks.services import keys as api_keys
from tasks.services import registry, tracking
from tests.support.paths import REPO
from tests.support.stack import run_deployment

pytestmark = pytest.mark.stack
DATA = json.loads((REPO / "infra/datasets/company_facts.json").read_text())


def run(deployment: str, parameters: dict | None = None):
    return run_deployment(deployment, parameters)


@pytest.fixture(scope="module")
def embedder(stack) -> dict:
    """finetune/flagembedding run once through the worker: its log, metrics and the version's tags."""
    flow_run_id, state, logs = run("finetune/flagembedding")
    assert state.is_completed(), logs[-3000:]
    metrics, tags = check_run(flow_run_id, "fineflow-embedder", "embedding", "embed")
    return {"logs": logs, "metrics": metrics, "tags": tags}


def check_run(flow_run_id, model: str, backend: str, model_type: str) -> tuple[dict, dict]:
    """What every retrieval run must record: live loss, both models' metrics past the gate, the version's tags."""
    mlrun = tracking.run_for_flow_run(str(flow_run_id))
    run_id, metrics = mlrun.info.run_id, mlrun.data.metrics
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["framework"] == "flagembedding"
    losses = tracking.client().get_metric_history(run_id, "train_loss")
    assert len(losses) >= 10 and losses[-1].value < losses[0].value  # logged by step while FlagEmbedding ran
    assert metrics["candidate_ndcg_at_10"] > metrics["base_ndcg_at_10"] + 0.02
    assert metrics["candidate_mrr_at_10"] > metrics["base_mrr_at_10"]
    with tempfile.TemporaryDirectory() as tmp:
        report = json.loads(Path(tracking.client().download_artifacts(run_id, "eval/report.json", tmp)).read_text())
    assert report["model_type"] == model_type and report["gate"]["metric"] == "ndcg_at_10" and report["passed"]
    assert report["candidate"]["n"] == 96  # every held-out query
    version = mlrun.data.tags["registered_version"]
    tags = registry.version_tags(model, version)
    assert tags["model_type"] == model_type and tags["backend"] == backend and tags["health"] == "ok"
    assert float(tags["candidate_ndcg_at_10"]) == pytest.approx(metrics["candidate_ndcg_at_10"], abs=1e-4)
    assert registry.alias_version(model, "production") == version
    return metrics, tags


def test_embedder_pipeline_serves_a_better_embedder_on_the_builtin_server(embedder):
    metrics, tags, logs = embedder["metrics"], embedder["tags"], embedder["logs"]
    assert metrics["candidate_recall_at_1"] > metrics["base_recall_at_1"]
    assert "validation queries put their positive before their hard negative" in logs
    # The official client against the registered endpoint, with the key; a stranger is refused.
    client = openai.OpenAI(base_url=f"{tags['endpoint_url']}/v1", api_key=api_keys.api_key())
    record = DATA[0]
    out = client.embeddings.create(model="fineflow-embedder", input=[record["query"], record["pos"][0],
                                                                     record["neg"][0]])
    q, p, n = (d.embedding for d in out.data)
    assert len(q) == 384 and cosine(q, p) > cosine(q, n) and out.usage.prompt_tokens > 0
    single = client.embeddings.create(model="fineflow-embedder", input=record["query"])  # base64 on the wire
    assert single.data[0].embedding == pytest.approx(q, abs=1e-5)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{tags['endpoint_url']}/v1", api_key="nope").embeddings.create(model="m", input="x")
    with pytest.raises(openai.BadRequestError, match="input is an empty list"):
        client.embeddings.create(model="fineflow-embedder", input=[])


def test_reranker_pipeline_serves_a_better_reranker_on_infinity(stack):
    flow_run_id, state, logs = run("finetune/flagembedding-rerank")
    assert state.is_completed(), logs[-3000:]
    metrics, tags = check_run(flow_run_id, "fineflow-reranker", "infinity", "rerank")
    assert "infinity_emb v2" in tags["launch_command"] and api_keys.api_key() not in tags["launch_command"]
    record = DATA[1]
    body = {"model": "fineflow-reranker", "query": record["query"], "documents": [*record["neg"][:3], record["pos"][0]]}
    ranked = httpx.post(f"{tags['endpoint_url']}/rerank", json=body, headers=api_keys.auth_headers(), timeout=60)
    assert ranked.status_code == 200, ranked.text
    assert ranked.json()["results"][0]["index"] == 3  # the positive first
    assert httpx.post(f"{tags['endpoint_url']}/rerank", json=body, timeout=60).status_code == 401


def test_a_candidate_short_of_the_gate_is_registered_rejected_and_production_keeps_serving(embedder):
    production = registry.alias_version("fineflow-embedder", "production")
    served = registry.version_tags("fineflow-embedder", production)["endpoint_url"]
    flow_run_id, state, logs = run("finetune/flagembedding",
                                   {"overrides": {"evaluate": {"gate": {"min_improvement": 0.5}}}})
    assert state.is_completed(), logs[-3000:]
    mlrun = tracking.run_for_flow_run(str(flow_run_id))
    version = mlrun.data.tags["registered_version"]
    tags = registry.version_tags("fineflow-embedder", version)
    assert tags["status"] == "rejected" and "does not beat base" in tags["gate"]
    assert registry.alias_version("fineflow-embedder", "production") == production != version
    r = httpx.post(f"{served}/v1/embeddings", json={"input": "still here"}, headers=api_keys.auth_headers(), timeout=30)
    assert r.status_code == 200  # the production endpoint was never touched
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{tags['endpoint_url']}/health", timeout=5).raise_for_status()  # the candidate's is stopped


def test_an_alpaca_dataset_is_refused_before_training_and_nothing_moves(embedder):
    before = registry.alias_version("fineflow-embedder", "production")
    flow_run_id, state, logs = run("finetune/flagembedding", {"overrides": {"data": {"path": "infra/datasets/word_ops.json"}}})
    assert not state.is_completed()
    assert "flagembedding (FlagembeddingFinetune) trains on triplets or rerank records, not alpaca records" in logs
    assert "FlagEmbedding.finetune" not in logs  # no training command ever ran
    assert registry.alias_version("fineflow-embedder", "production") == before
