"""The built-in embedding and rerank server.

    FINEFLOW_API_KEY=... python -m tasks.servers.embed --model PATH --port 8000 --kind embed|rerank
        [--engine huggingface|flagembedding] [--sparse] [--max-batch 64] [--batch-wait-ms 0] [--max-inputs 2048]
        [--max-documents 1000] [--max-body-bytes 8000000] [--threads 2]

Routes: ``/health`` (open), ``/v1/models``, and by kind
- ``embed``: ``POST /v1/embeddings`` as OpenAI's (``input`` a string or a list of strings, ``encoding_format``
  ``float`` or ``base64``, ``usage``); with ``--sparse`` each embedding is ``{token_id: weight}``;
- ``rerank``: ``POST /v1/rerank`` in the Cohere/Jina shape (``query``, ``documents``, ``top_n``,
  ``return_documents`` -> ``results`` of ``index`` and ``relevance_score``, best first).

Concurrent requests are encoded together (``microbatch.py``). The API key, body bound and error shape are the
relay's (``openai_api.guard``); the number of inputs and documents is bounded too, with a 400 naming the limit.
Texts longer than the model's maximum sequence length are truncated to it, as every embedding server does.
"""

from __future__ import annotations

import argparse
import base64
import time
import uuid
from typing import Literal

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

from tasks.servers.auth import required_key
from tasks.servers.microbatch import MicroBatcher
from tasks.servers.openai_api import ApiError, guard, uvicorn_server


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: None = None  # the model's own size only
    user: str | None = None


class Document(BaseModel):
    text: str


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str
    documents: list[str | Document]
    model: str | None = None
    top_n: int | None = None
    return_documents: bool = False


ENGINES = ("huggingface", "flagembedding")


def load(model_path: str, kind: str, engine: str, sparse: bool):
    """The contract's model wrapper for ``kind`` and ``engine`` (``embedders.py``)."""
    from tasks.servers import embedders

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: one of {', '.join(ENGINES)}")
    if kind == "rerank":
        return embedders.LazyHuggingFaceRerank(model_path)
    if engine == "flagembedding" or sparse:
        return embedders.LazyFlagEmbedding(model_path, sparse=sparse, init=True)
    return embedders.HuggingFaceEmbedding(model_path)


def create_app(model_path: str, name: str, kind: str = "embed", *, engine: str = "huggingface", sparse: bool = False,
               api_key: str | None = None, max_batch: int = 64, batch_wait_ms: float = 0, max_inputs: int = 2048,
               max_documents: int = 1000, max_body_bytes: int = 8_000_000) -> FastAPI:
    from transformers import AutoTokenizer

    model = load(model_path, kind, engine, sparse)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # Usage counts the tokens the model read: its own truncation, not the tokenizer's. Asking loads the model, so
    # the server answers /health only once the model is in memory.
    max_len = model.max_tokens
    fn = model.score if kind == "rerank" else model.encode
    batcher = MicroBatcher(fn, max_batch=max_batch, wait_ms=batch_wait_ms)
    app = FastAPI(title=f"fineflow {kind} server: {name}")
    app.state.batcher, app.state.model = batcher, model
    guard(app, api_key, max_body_bytes)
    created = int(time.time())

    def tokens(texts: list[str], pairs_with: str | None = None) -> int:
        if pairs_with is not None:
            ids = tokenizer([pairs_with] * len(texts), texts, truncation=True, max_length=max_len).input_ids
        else:
            ids = tokenizer(texts, truncation=True, max_length=max_len).input_ids
        return sum(len(i) for i in ids)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "kind": kind, "batches": batcher.calls, "items": batcher.items}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "fineflow"}]}

    if kind == "embed":
        @app.post("/v1/embeddings")
        async def embeddings(req: EmbeddingRequest):
            texts = [req.input] if isinstance(req.input, str) else req.input
            if not texts:
                raise ApiError(400, "input is an empty list: give a string or a non-empty list of strings", "input")
            if len(texts) > max_inputs:
                raise ApiError(400, f"input has {len(texts)} items; at most {max_inputs} per request", "input")
            if empty := [i for i, t in enumerate(texts) if not t.strip()]:
                raise ApiError(400, f"input[{empty[0]}] is empty", "input")
            if sparse and req.encoding_format == "base64":
                raise ApiError(400, "sparse embeddings are {token: weight} objects; base64 applies to dense "
                                    "vectors only", "encoding_format")
            vectors = await batcher.submit(texts)
            data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, req.encoding_format)}
                    for i, v in enumerate(vectors)]
            n = tokens(texts)
            return {"object": "list", "data": data, "model": req.model or name,
                    "usage": {"prompt_tokens": n, "total_tokens": n}}
    else:
        @app.post("/v1/rerank")
        async def rerank(req: RerankRequest):
            docs = [d if isinstance(d, str) else d.text for d in req.documents]
            if not docs:
                raise ApiError(400, "documents is empty: give at least one", "documents")
            if len(docs) > max_documents:
                raise ApiError(400, f"documents has {len(docs)} items; at most {max_documents} per request "
                                    "(send several requests, or rerank fewer candidates)", "documents")
            if not req.query.strip():
                raise ApiError(400, "query is empty", "query")
            if req.top_n is not None and req.top_n < 1:
                raise ApiError(400, "top_n must be at least 1", "top_n")
            scores = await batcher.submit([(req.query, d) for d in docs])
            order = sorted(range(len(docs)), key=lambda i: -scores[i])[: req.top_n or len(docs)]
            results = [{"index": i, "relevance_score": scores[i],
                        **({"document": {"text": docs[i]}} if req.return_documents else {})} for i in order]
            return {"id": f"rerank-{uuid.uuid4().hex[:12]}", "model": req.model or name, "results": results,
                    "usage": {"total_tokens": tokens(docs, pairs_with=req.query)}}

    return app


def encode_vector(vector, encoding_format: str):
    """A dense vector as floats, or as OpenAI's base64 of little-endian float32; a sparse one as it is."""
    if isinstance(vector, dict) or encoding_format == "float":
        return vector
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="fineflow-embed")
    parser.add_argument("--kind", choices=("embed", "rerank"), default="embed")
    parser.add_argument("--engine", choices=ENGINES, default="huggingface")
    parser.add_argument("--sparse", action="store_true", help="lexical weights instead of dense vectors")
    parser.add_argument("--max-batch", type=int, default=64, help="texts (or pairs) encoded together at most")
    parser.add_argument("--batch-wait-ms", type=float, default=0, help="how long a batch waits for company")
    parser.add_argument("--max-inputs", type=int, default=2048, help="texts per /v1/embeddings request")
    parser.add_argument("--max-documents", type=int, default=1000, help="documents per /v1/rerank request")
    parser.add_argument("--max-body-bytes", type=int, default=8_000_000)
    parser.add_argument("--threads", type=int, default=0, help="torch's threads (0: torch's default)")
    return parser.parse_args(argv)


def server(argv: list[str] | None = None):
    """The server for the command line ``argv`` (the key from ``FINEFLOW_API_KEY``), not yet running."""
    args = parse_args(argv)
    key = required_key(args.host)
    app = create_app(args.model, args.name, args.kind, engine=args.engine, sparse=args.sparse, api_key=key,
                     max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_inputs=args.max_inputs,
                     max_documents=args.max_documents, max_body_bytes=args.max_body_bytes)
    print(f"fineflow {args.kind} server: {args.name} on {args.host}:{args.port}, API key "
          f"{'required' if key else 'OFF (loopback only)'}, batches of up to {args.max_batch}", flush=True)
    return uvicorn_server(app, args.host, args.port)


def main(argv: list[str] | None = None) -> None:
    # pragma: no mutate start (runs only in the server process, which tests/component/test_embed_serving.py starts
    # and queries; a mutation tester sees in-process calls only.)
    threads = parse_args(argv).threads
    if threads:
        import torch

        torch.set_num_threads(threads)
    server(argv).run()
    # pragma: no mutate end


if __name__ == "__main__":
    main()
