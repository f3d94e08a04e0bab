"""Embedding and rerank endpoints, for real: the built-in server and Infinity, each started as the pipeline starts
them, driven with the official ``openai`` client (``client.embeddings.create``) and plain HTTP for ``/rerank``.

The pipelines (``test_embedding_pipeline.py``) serve the finetuned embedder on the built-in server and the
finetuned reranker on Infinity; here the other two pairings run on the embedded base models, with the bad
inputs the issue lists.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time

import httpx
import openai
import pytest

from infra.embed_models import EMBED, RERANK
from tasks.deploy import Infinity, RerankDeploy, endpoints
from tasks.deploy.embed import cosine
from tasks.deploy.microbatch import MicroBatcher
from tasks.models.local import EMBEDDED_MODELS

KEY = "test-key-0123456789"
EMBEDDER, RERANKER = str(EMBEDDED_MODELS / EMBED), str(EMBEDDED_MODELS / RERANK)
TRIPLET = {"query": "Who founded the Vorlex company?", "pos": ["Vorlex was started in 1990 by Ada Holm."],
           "neg": ["The weather in Lisbon is mild in spring."]}


def start(engine, model: str, name: str):
    command = engine.with_api_key(engine.cmd(model), KEY)
    return endpoints.start(name, command, engine.engine, model)


@pytest.fixture(scope="module")
def builtin_rerank():
    ep = start(RerankDeploy(name="rr", max_documents=1000), RERANKER, "test-builtin-rerank")
    yield ep
    endpoints.stop(ep.name)


@pytest.fixture(scope="module")
def infinity_embed():
    ep = start(Infinity(model_type="embed", name="inf-embed", device="cpu"), EMBEDDER, "test-infinity-embed")
    yield ep
    endpoints.stop(ep.name)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_infinity_serves_embeddings_to_the_openai_client(infinity_embed):
    client = openai.OpenAI(base_url=infinity_embed.url, api_key=KEY)
    one = client.embeddings.create(model="inf-embed", input=TRIPLET["query"])
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    three = client.embeddings.create(model="inf-embed", input=[TRIPLET["query"], TRIPLET["pos"][0], TRIPLET["neg"][0]])
    q, p, n = (d.embedding for d in three.data)
    assert cosine(q, p) > cosine(q, n)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=infinity_embed.url, api_key="wrong").embeddings.create(model="inf-embed", input="x")
    # The pipeline's smoke test and the contract's extract_result on the same endpoint.
    engine = Infinity(model_type="embed", name="inf-embed")
    assert engine.smoke_test(infinity_embed.url, [TRIPLET], auth(), EMBEDDER)[0].startswith("1/1")
    raw = httpx.post(f"{infinity_embed.url}/embeddings", json={"model": "inf-embed", "input": "a"}, headers=auth())
    assert len(__import__("json").loads(Infinity.extract_result(raw.text, {"input": "a"}))) == 384


def test_builtin_rerank_orders_the_positive_first(builtin_rerank):
    docs = [TRIPLET["neg"][0], TRIPLET["pos"][0], {"text": "Vorlex sells bicycle locks."}]
    r = httpx.post(f"{builtin_rerank.url}/v1/rerank", headers=auth(), timeout=30,
                   json={"query": TRIPLET["query"], "documents": docs, "top_n": 2, "return_documents": True})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2 and all(0 <= x["relevance_score"] <= 1 for x in results)
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert {x["index"] for x in results} <= {0, 1, 2} and "document" in results[0]
    assert r.json()["usage"]["total_tokens"] > 0
    assert httpx.post(f"{builtin_rerank.url}/v1/rerank", json={"query": "q", "documents": ["d"]}).status_code == 401


@pytest.mark.parametrize("body,status,words", [
    ({"query": "q", "documents": ["d"] * 10_000}, 400, "at most 1000"),   # bounded, never a crash
    ({"query": "q", "documents": []}, 400, "documents is empty"),
    ({"query": " ", "documents": ["d"]}, 400, "query is empty"),
    ({"query": "q", "documents": ["d"], "top_n": 0}, 400, "top_n"),
    ({"query": "q", "documents": ["d"], "rank_fields": ["x"]}, 400, "rank_fields"),
])
def test_builtin_rerank_refuses_bad_requests_clearly(builtin_rerank, body, status, words):
    r = httpx.post(f"{builtin_rerank.url}/v1/rerank", json=body, headers=auth(), timeout=30)
    assert r.status_code == status and words in r.json()["error"]["message"], r.text
    assert httpx.get(f"{builtin_rerank.url}/health").status_code == 200  # still serving


def test_builtin_embeddings_in_process(tmp_path):
    """The built-in embedding app on the embedded MiniLM (the pipeline test drives it over HTTP with the openai
    client): base64 is OpenAI's little-endian float32, bad input is a 400 naming the field."""
    from fastapi.testclient import TestClient

    from tasks.deploy.embed_app import create_app

    with TestClient(create_app(EMBEDDER, "e", "embed", api_key=KEY, max_inputs=4)) as client:
        check_embeddings(client)


def check_embeddings(client) -> None:
    ok = client.post("/v1/embeddings", json={"input": ["a b", "c"], "encoding_format": "base64"}, headers=auth())
    assert ok.status_code == 200, ok.text
    raw = base64.b64decode(ok.json()["data"][0]["embedding"])
    floats = client.post("/v1/embeddings", json={"input": ["a b"]}, headers=auth()).json()["data"][0]["embedding"]
    assert pytest.approx(list(struct.unpack(f"<{len(raw) // 4}f", raw)), abs=1e-6) == floats and len(floats) == 384
    assert ok.json()["usage"]["prompt_tokens"] == ok.json()["usage"]["total_tokens"] > 0
    for body, words in (({"input": []}, "input is an empty list"), ({"input": ["x"] * 5}, "at most 4"),
                        ({"input": ["ok", ""]}, "input[1] is empty"), ({"input": "x", "dimensions": 8}, "dimensions")):
        bad = client.post("/v1/embeddings", json=body, headers=auth())
        assert bad.status_code == 400 and words in bad.json()["error"]["message"], bad.text
    assert client.post("/v1/rerank", json={"query": "q", "documents": ["d"]}, headers=auth()).status_code == 404


def test_concurrent_requests_share_a_batch():
    calls: list[int] = []

    def encode(items):
        calls.append(len(items))
        time.sleep(0.05)
        return [x * 2 for x in items]

    async def main():
        batcher = MicroBatcher(encode, max_batch=8, wait_ms=20)
        out = await asyncio.gather(*(batcher.submit([i]) for i in range(16)), batcher.submit(list(range(10))))
        return out, batcher

    out, batcher = asyncio.run(main())
    assert [o[0] for o in out[:16]] == [2 * i for i in range(16)] and out[16] == [2 * i for i in range(10)]
    assert batcher.items == 26 and batcher.calls == len(calls) <= 5 and max(calls) == 8  # not 17 one-by-one calls


def test_a_failing_batch_fails_its_requests_and_not_the_server():
    def encode(items):
        if "boom" in items:
            raise RuntimeError("boom")
        return items

    async def main():
        batcher = MicroBatcher(encode, max_batch=4, wait_ms=1)
        with pytest.raises(RuntimeError):
            await batcher.submit(["boom"])
        return await batcher.submit(["fine"])

    assert asyncio.run(main()) == ["fine"]
