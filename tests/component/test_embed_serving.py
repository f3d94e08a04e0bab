"""Embedding and rerank endpoints, for real: the built-in server and Infinity, each started as the pipeline starts
them, driven with the official ``openai`` client (``client.embeddings.create``) and plain HTTP for ``/rerank``.

The pipelines (``test_embedding_pipeline.py``) serve the finetuned embedder on the built-in server and the
finetuned reranker on Infinity; here the other two pairings run on the embedded base models, with the bad
inputs the issue lists.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
import time

import httpx
import openai
import pytest

from infra.embed_models import EMBED, RERANK
from tasks.deploy import Infinity, RerankDeploy
from tasks.deploy.base import SmokeTestError
from tasks.deploy.embed import cosine
from tasks.models.local import EMBEDDED_MODELS
from tasks.servers.microbatch import MicroBatcher
from tasks.serving import endpoints
from tests.support.paths import TINY_MODEL

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
    swapped = {**TRIPLET, "pos": TRIPLET["neg"], "neg": TRIPLET["pos"]}  # an endpoint that ranks so is wrong
    with pytest.raises(SmokeTestError, match="only 0/1 validation queries"):
        engine.smoke_test(infinity_embed.url, [swapped], auth(), EMBEDDER)
    with pytest.raises(SmokeTestError, match="vectors of 384 dimensions, the model has 128"):
        engine.smoke_test(infinity_embed.url, [TRIPLET], auth(), str(TINY_MODEL))  # hidden size 128
    raw = httpx.post(f"{infinity_embed.url}/embeddings", json={"model": "inf-embed", "input": "a"}, headers=auth())
    assert len(json.loads(Infinity.extract_result(raw.text, {"input": "a"}))) == 384


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


def test_concurrent_http_requests_are_reranked_in_shared_batches(builtin_rerank):
    """Sixteen clients with one document each: the server's own counters (``/health``) show fewer model calls
    than requests, every document scored once."""
    before = httpx.get(f"{builtin_rerank.url}/health").json()

    async def many():
        async with httpx.AsyncClient(timeout=60, headers=auth()) as c:
            return await asyncio.gather(*(c.post(f"{builtin_rerank.url}/v1/rerank",
                                                 json={"query": TRIPLET["query"], "documents": [f"doc {i}"]})
                                          for i in range(16)))

    assert all(r.status_code == 200 for r in asyncio.run(many()))
    after = httpx.get(f"{builtin_rerank.url}/health").json()
    assert after["items"] - before["items"] == 16 and after["batches"] - before["batches"] <= 8


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

    from tasks.servers.embed import create_app

    before = int(time.time())
    with TestClient(create_app(EMBEDDER, "e", "embed", api_key=KEY, max_inputs=4)) as client:
        check_embeddings(client)
        listed = client.get("/v1/models", headers=auth()).json()
    created = listed["data"][0].pop("created")
    assert listed == {"object": "list", "data": [{"id": "e", "object": "model", "owned_by": "fineflow"}]}
    assert before <= created <= time.time()


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
        out = await asyncio.wait_for(asyncio.gather(*(batcher.submit([i]) for i in range(16)),
                                                    batcher.submit(list(range(10)))), 30)
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
            await asyncio.wait_for(batcher.submit(["boom"]), 10)
        return await asyncio.wait_for(batcher.submit(["fine"]), 10)

    assert asyncio.run(main()) == ["fine"]


def test_sparse_embeddings_come_from_flagembedding_in_its_environment(tmp_path):
    """``embed_type='sparse'``: the same server in the flagembedding environment, FlagEmbedding's M3 encoder giving
    ``{token_id: weight}`` over the input's own tokens. MiniLM has no sparse head, so the test gives its copy one
    whose every weight is 0.5 (a BGE-M3 model ships a trained one): the weights are then known exactly."""
    import torch
    from transformers import AutoTokenizer

    from tasks.deploy import EmbeddingDeploy

    model = tmp_path / "minilm-m3"
    model.mkdir()
    for f in (EMBEDDED_MODELS / EMBED).iterdir():
        (model / f.name).symlink_to(f)
    sparse, colbert = torch.nn.Linear(384, 1), torch.nn.Linear(384, 384)
    torch.nn.init.zeros_(sparse.weight), torch.nn.init.constant_(sparse.bias, 0.5)
    torch.save(sparse.state_dict(), model / "sparse_linear.pt")
    torch.save(colbert.state_dict(), model / "colbert_linear.pt")
    engine = EmbeddingDeploy(embed_type="sparse", name="sparse")
    assert engine.environment == "flagembedding" and "--sparse" in engine.cmd(str(model)).argvs[-1]
    ep = start(engine, str(model), "test-sparse")
    try:
        r = httpx.post(f"{ep.url}/v1/embeddings", json={"input": ["red fox jumps", "blue"]}, headers=auth(), timeout=60)
        assert r.status_code == 200, r.text
        first = r.json()["data"][0]["embedding"]
        tok = AutoTokenizer.from_pretrained(EMBEDDER)
        ids = set(tok("red fox jumps").input_ids) - {tok.cls_token_id}  # FlagEmbedding keeps [SEP]
        assert first == pytest.approx({str(i): 0.5 for i in ids}) and len(ids) == 4
        base64_asked = httpx.post(f"{ep.url}/v1/embeddings", json={"input": "x", "encoding_format": "base64"},
                                  headers=auth(), timeout=60)
        assert base64_asked.status_code == 400 and "sparse" in base64_asked.json()["error"]["message"]
    finally:
        endpoints.stop(ep.name)


def test_the_contract_wrappers_answer_as_the_reference_package_does(tmp_path):
    from tasks.deploy import EmbeddingDeploy
    from tasks.deploy.embed import HuggingFaceEmbedding, LazyHuggingFaceRerank

    embed = HuggingFaceEmbedding(EMBEDDER)
    one = json.loads(embed({"text": "a red fox", "images": []}))
    many = json.loads(embed({"text": ["a red fox", "blue"], "images": []}))
    assert len(one) == 384 and len(many) == 2 and many[0] == pytest.approx(one, abs=1e-5)
    ranked = LazyHuggingFaceRerank(RERANKER)({"query": "q", "documents": ["a", "b", "c"], "top_n": 2})
    assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1] and {i for i, _ in ranked} <= {0, 1, 2}
    # No weights in the finetuned folder: the base model is served (and said so).
    (tmp_path / "empty").mkdir()
    assert value_of(EmbeddingDeploy().cmd(str(tmp_path / "empty"), EMBEDDER).argvs[-1], "--model") == EMBEDDER
    with pytest.raises(FileNotFoundError, match="no model to serve"):
        EmbeddingDeploy().cmd(str(tmp_path / "empty"), str(tmp_path / "empty"))


def value_of(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_the_embedded_reranker_is_built_deterministically(tmp_path):
    from infra.embed_models import build_reranker
    from tasks.files import sha256_file

    built = build_reranker(tmp_path)
    assert sha256_file(built / "model.safetensors") == sha256_file(EMBEDDED_MODELS / RERANK / "model.safetensors")
    config = json.loads((built / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 1


def test_the_command_line_builds_the_server_it_names(capsys, monkeypatch):
    """What ``python -m tasks.servers.embed`` serves, in-process: every option reaches the app, the key comes from
    the environment, the help says what each option is for."""
    from fastapi.testclient import TestClient

    from tasks.servers.embed import parse_args, server

    assert vars(parse_args(["--model", "m", "--port", "1"])) == {
        "model": "m", "port": 1, "host": "127.0.0.1", "name": "fineflow-embed", "kind": "embed",
        "engine": "huggingface", "sparse": False, "max_batch": 64, "batch_wait_ms": 0, "max_inputs": 2048,
        "max_documents": 1000, "max_body_bytes": 8_000_000, "threads": 0}
    explicit = parse_args(["--model", "m", "--port", "1", "--kind", "embed", "--engine", "huggingface", "--threads",
                           "2"])
    assert (explicit.kind, explicit.engine, explicit.threads) == ("embed", "huggingface", 2)
    assert parse_args(["--model", "m", "--port", "1", "--kind", "rerank", "--engine", "flagembedding",
                       "--sparse"]).engine == "flagembedding"
    for bad in (["--port", "1"], ["--model", "m"], ["--model", "m", "--port", "1", "--kind", "chat"],
                ["--model", "m", "--port", "1", "--engine", "infinity"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split()) + " "
    assert "The built-in embedding and rerank server. " in shown
    for option, words in (("--sparse", "lexical weights instead of dense vectors"),
                          ("--max-batch MAX_BATCH", "texts (or pairs) encoded together at most"),
                          ("--batch-wait-ms BATCH_WAIT_MS", "how long a batch waits for company"),
                          ("--max-inputs MAX_INPUTS", "texts per /v1/embeddings request"),
                          ("--max-documents MAX_DOCUMENTS", "documents per /v1/rerank request"),
                          ("--threads THREADS", "torch's threads (0: torch's default)")):
        assert f" {option} {words} " in shown, option

    monkeypatch.setenv("FINEFLOW_API_KEY", KEY)
    srv = server(["--model", EMBEDDER, "--port", "5", "--host", "localhost", "--name", "e2", "--max-batch", "3",
                  "--batch-wait-ms", "7", "--max-inputs", "2", "--max-body-bytes", "300"])
    assert (srv.config.host, srv.config.port) == ("localhost", 5)
    assert capsys.readouterr().out == "fineflow embed server: e2 on localhost:5, API key required, batches of up " \
                                      "to 3\n"
    batcher = srv.config.app.state.batcher
    assert (batcher.max_batch, batcher.wait_s) == (3, 0.007)
    with TestClient(srv.config.app) as c:
        assert c.post("/v1/embeddings", json={"input": "a"}).status_code == 401
        assert c.get("/health").json()["model"] == "e2"
        assert c.post("/v1/embeddings", json={"input": ["a", "b"]}, headers=auth()).json()["model"] == "e2"
        three = c.post("/v1/embeddings", json={"input": ["a", "b", "c"]}, headers=auth())
        assert three.status_code == 400 and "at most 2" in three.json()["error"]["message"]
        assert c.post("/v1/embeddings", json={"input": "x" * 400}, headers=auth()).status_code == 413
    for engine in (["--engine", "flagembedding"], ["--sparse"]):  # the main environment has no FlagEmbedding
        with pytest.raises(RuntimeError, match="FlagEmbedding is not installed in this Python .* own environment"):
            server(["--model", EMBEDDER, "--port", "5", *engine])
    monkeypatch.delenv("FINEFLOW_API_KEY")
    with pytest.raises(SystemExit, match="refusing to serve on 0.0.0.0 without an API key"):
        server(["--model", RERANKER, "--port", "6", "--kind", "rerank", "--host", "0.0.0.0"])
    srv = server(["--model", RERANKER, "--port", "6", "--kind", "rerank", "--max-documents", "2"])
    assert capsys.readouterr().out == "fineflow rerank server: fineflow-embed on 127.0.0.1:6, API key OFF (loopback " \
                                      "only), batches of up to 64\n"
    with TestClient(srv.config.app) as c:
        assert c.get("/health").json()["kind"] == "rerank"
        many = c.post("/v1/rerank", json={"query": "q", "documents": ["a", "b", "c"]})
        assert many.status_code == 400 and "at most 2 per request" in many.json()["error"]["message"]


def test_the_default_bounds_and_usage_counts_the_tokens_the_model_read():
    """An app with every default: batches of up to 64 with no wait, 2,048 inputs, 1,000 documents and 8 MB per
    request; ``usage`` counts the tokens the encoder read (MiniLM truncates a text at 256 tokens, the cross-encoder
    a pair at 512), not the text's full length; the model is loaded before the app serves."""
    from fastapi.testclient import TestClient

    from tasks.servers.embed import create_app

    long = " ".join(["word"] * 600)  # 600 tokens and more
    app = create_app(EMBEDDER, "e", api_key=KEY)
    assert (app.state.batcher.max_batch, app.state.batcher.wait_s) == (64, 0)
    with TestClient(app) as c:
        r = c.post("/v1/embeddings", json={"input": [long, "a b"]}, headers=auth())
        assert r.json()["usage"] == {"prompt_tokens": 256 + 4, "total_tokens": 256 + 4}  # [CLS] a b [SEP]: 4
        many = c.post("/v1/embeddings", json={"input": ["a"] * 2049}, headers=auth())
        assert many.status_code == 400 and "input has 2049 items; at most 2048" in many.json()["error"]["message"]
        json_header = {**auth(), "content-type": "application/json"}
        assert c.post("/v1/embeddings", content=b"x" * 8_000_001, headers=json_header).status_code == 413
        assert c.post("/v1/embeddings", content=b"x" * 8_000_000, headers=json_header).status_code == 400

    with pytest.raises(ValueError, match="^unknown engine 'infinity': one of huggingface, flagembedding$"):
        create_app(EMBEDDER, "e", engine="infinity")
    app = create_app(RERANKER, "r", "rerank", api_key=KEY)
    assert app.state.model.reranker is not None  # loaded at start: the first request does not pay for it
    with TestClient(app) as c:
        r = c.post("/v1/rerank", json={"query": "q", "documents": [long, "a b"]}, headers=auth())
        assert r.json()["usage"] == {"total_tokens": 512 + 6}  # [CLS] q [SEP] a b [SEP]: 6
        many = c.post("/v1/rerank", json={"query": "q", "documents": ["d"] * 1001}, headers=auth())
        assert many.status_code == 400 and "documents has 1001 items; at most 1000" in many.json()["error"]["message"]


def test_the_batcher_runs_the_model_on_its_own_thread_and_needs_a_positive_batch():
    threads: set[str] = set()

    def encode(items):
        threads.add(threading.current_thread().name)
        return items

    async def main():
        batcher = MicroBatcher(encode, max_batch=1, wait_ms=0)
        return await batcher.submit([1, 2, 3]), batcher

    out, batcher = asyncio.run(main())
    assert out == [1, 2, 3] and batcher.calls == 3 and len(threads) == 1 and threads.pop().startswith("encoder")
    # Used again from another event loop (a second test client of one app): its queue and worker start again there.
    assert asyncio.run(asyncio.wait_for(batcher.submit([4]), 10)) == [4] and batcher.calls == 4
    with pytest.raises(ValueError, match="^max_batch must be at least 1$"):
        MicroBatcher(encode, max_batch=0, wait_ms=0)


def test_a_full_batch_runs_at_once_and_company_that_comes_in_time_joins_it():
    """A batch that is full runs without waiting ``wait_ms`` for company (a 60 s wait here: the test would time out);
    a request that arrives while a batch is still waiting joins it."""
    calls: list[list[str]] = []

    def encode(items):
        calls.append(list(items))
        return items

    async def full(send):
        return await asyncio.wait_for(send(MicroBatcher(encode, max_batch=2, wait_ms=60_000)), 10)

    assert asyncio.run(full(lambda b: b.submit(["a", "b"]))) == ["a", "b"]
    assert asyncio.run(full(lambda b: asyncio.gather(b.submit(["c"]), b.submit(["d"])))) == [["c"], ["d"]]
    assert calls == [["a", "b"], ["c", "d"]]

    async def late():
        batcher = MicroBatcher(encode, max_batch=8, wait_ms=900)
        first = asyncio.ensure_future(batcher.submit(["e"]))
        await asyncio.sleep(0.05)
        return await asyncio.gather(first, batcher.submit(["f"]))

    assert asyncio.run(late()) == [["e"], ["f"]] and calls[-1] == ["e", "f"]
