"""``EmbeddingDeploy`` and ``RerankDeploy``: the built-in embedding and rerank server
(``tasks/servers/embed.py``).

    server = EmbeddingDeploy(embed_type='dense')
    server.cmd('infra/models/all-minilm-l6-v2')     # Command: the server argv; return_value is its URL
    RerankDeploy().cmd(finetuned_model, base_model)  # the base model when the finetuned folder has no weights

Dense embeddings run in this environment (sentence-transformers); ``embed_type='sparse'`` (FlagEmbedding's
lexical weights) runs the same server in the ``flagembedding`` environment. The smoke test for the pipeline is
``RetrievalSmoke``'s, shared with Infinity: an embedding has the model's dimension and puts a validation query
nearer its positive than its hard negative; a reranker orders the positive first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field

from tasks import envs
from tasks.core import Command, check_kwargs
from tasks.deploy.base import DeployParams, LazyLLMDeployBase, SmokeTestError, model_to_serve
from tasks.servers.embedders import AbstractEmbedding, HuggingFaceEmbedding, LazyFlagEmbedding, LazyHuggingFaceRerank

log = logging.getLogger(__name__)
__all__ = ["AbstractEmbedding", "EmbeddingDeploy", "HuggingFaceEmbedding", "LazyFlagEmbedding", "LazyHuggingFaceRerank",
           "RerankDeploy", "RetrievalSmoke"]
SMOKE_RECORDS = 5  # validation records the smoke test tries; most must come out right


class EmbedParams(DeployParams):
    embed_type: Literal["dense", "sparse"] = "dense"
    trust_remote_code: bool = True
    max_batch: int = Field(64, ge=1, le=4096)  # texts encoded together
    batch_wait_ms: float = Field(0, ge=0, le=1000)  # requests queued while a batch runs make the next one
    max_inputs: int = Field(2048, ge=1)  # texts per /v1/embeddings request
    max_documents: int = Field(1000, ge=1)  # documents per /v1/rerank request
    max_body_bytes: int = Field(8_000_000, ge=1024)
    threads: int = Field(0, ge=0, le=256)  # torch's threads; 0: torch's default


def model_dimension(model_path: str) -> int | None:
    """The embedding size a model's files declare (its pooling layer, in either sentence-transformers spelling,
    else its hidden size)."""
    for name, keys in (("1_Pooling/config.json", ("word_embedding_dimension", "embedding_dimension")),
                       ("config.json", ("hidden_size",))):
        path = Path(model_path) / name
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if found := next((data[k] for k in keys if k in data), None):
            return found
    return None


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
    return dot / norm if norm else 0.0


class RetrievalSmoke:
    """The smoke test of an embedding or rerank endpoint, on validation triplets ({query, pos, neg})."""

    model_type: str
    embeddings_path: ClassVar[str] = "/v1/embeddings"
    rerank_path: ClassVar[str] = "/v1/rerank"
    name: str

    def smoke_test(self, url: str, records: list[dict], headers: dict, model_path: str, **_: Any) -> tuple[str, str]:
        triplets = [r for r in records if r.get("pos") and r.get("neg")][:SMOKE_RECORDS]
        if not triplets:
            raise SmokeTestError("the smoke test needs validation records with a positive and a negative passage")
        right = [self._one(url, r, headers, model_path) for r in triplets]
        verdict = f"{sum(right)}/{len(right)} validation queries put their positive before their hard negative"
        if sum(right) * 2 <= len(right):
            raise SmokeTestError(f"{self.model_type} endpoint {url}: only {verdict}")
        return verdict, verdict

    def _one(self, url: str, record: dict, headers: dict, model_path: str) -> bool:
        query, pos, neg = record["query"], record["pos"][0], record["neg"][0]
        if self.model_type == "rerank":
            body = {"model": self.name, "query": query, "documents": [neg, pos], "top_n": 2}
            r = httpx.post(f"{url}{self.rerank_path}", json=body, headers=headers, timeout=60)
            r.raise_for_status()
            return r.json()["results"][0]["index"] == 1
        body = {"model": self.name, "input": [query, pos, neg], "encoding_format": "float"}
        r = httpx.post(f"{url}{self.embeddings_path}", json=body, headers=headers, timeout=60)
        r.raise_for_status()
        q, p, n = (d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"]))
        want = model_dimension(model_path)
        if isinstance(q, list) and want and len(q) != want:
            raise SmokeTestError(f"embedding endpoint {url}: vectors of {len(q)} dimensions, the model has {want}")
        return cosine(q, p) > cosine(q, n) if isinstance(q, list) else sparse_dot(q, p) > sparse_dot(q, n)


def sparse_dot(a: dict[str, float], b: dict[str, float]) -> float:
    return sum(w * b.get(k, 0.0) for k, w in a.items())


class EmbeddingDeploy(RetrievalSmoke, LazyLLMDeployBase):
    engine: ClassVar[str] = "embedding"
    Params: ClassVar[type[DeployParams]] = EmbedParams
    api_key_env: ClassVar[str | None] = "FINEFLOW_API_KEY"
    serves: ClassVar[tuple[str, ...]] = ("embed",)
    default_name: ClassVar[str] = "fineflow-embed"
    kind: ClassVar[str] = "embed"

    def __init__(self, launcher: Any = None, model_type: str = "embed", log_path: str | None = None,
                 embed_type: str = "dense", trust_remote_code: bool = True, port: int | None = None, **kw):
        check_kwargs(type(self).__name__, kw, ("host", "name", "prompt_style", *EmbedParams.model_fields))
        super().__init__(launcher=launcher, host=kw.get("host"), port=port, name=kw.get("name"),
                         prompt_style=kw.get("prompt_style"))
        fields = {k: v for k, v in kw.items() if k in EmbedParams.model_fields}
        self.params = EmbedParams(embed_type=embed_type, trust_remote_code=trust_remote_code, **fields)
        self.model_type, self.log_path = model_type, log_path
        if self.params.embed_type == "sparse":
            self.environment = "flagembedding"  # FlagEmbedding's lexical weights

    def geturl(self, job: Any = None) -> str:
        return f"{self.url()}/v1"

    def cmd(self, finetuned_model: str | None = None, base_model: str | None = None,
            master_ip: str | None = None) -> Command:
        self.single_node(master_ip)
        model = model_to_serve(type(self).__name__, finetuned_model, base_model)
        if model != finetuned_model:
            log.warning("no weights in the finetuned model %s: serving the base model %s", finetuned_model, model)
        p = self.params
        argv = [envs.bin_path(self.environment, "python"), "-m", "tasks.servers.embed", "--model", model,
                "--host", self.host, "--port", str(self.listen_port()), "--name", self.name, "--kind", self.kind,
                "--max-batch", str(p.max_batch), "--batch-wait-ms", str(p.batch_wait_ms),
                "--max-inputs", str(p.max_inputs), "--max-documents", str(p.max_documents),
                "--max-body-bytes", str(p.max_body_bytes), "--threads", str(p.threads)]
        if p.embed_type == "sparse":
            argv += ["--engine", "flagembedding", "--sparse"]
        return self.server_command(argv, {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})

    @staticmethod
    def extract_result(output, inputs):
        """The embedding(s) of an ``/v1/embeddings`` answer: one vector for a string input, a list for a list."""
        data = output.json() if hasattr(output, "json") else json.loads(output)
        if "results" in data:
            return [(r["index"], r["relevance_score"]) for r in data["results"]]
        vectors = [d["embedding"] for d in sorted(data["data"], key=lambda d: d["index"])]
        single = isinstance(inputs, str) or (isinstance(inputs, dict) and isinstance(inputs.get("input"), str))
        return vectors[0] if single and len(vectors) == 1 else vectors


class RerankDeploy(EmbeddingDeploy):
    engine: ClassVar[str] = "rerank"
    serves: ClassVar[tuple[str, ...]] = ("rerank",)
    kind: ClassVar[str] = "rerank"
    message_format = {"query": "query", "documents": ["string"], "top_n": 1}
    keys_name_handle = {"inputs": "query", "documents": "documents", "top_n": "top_n"}

    def __init__(self, launcher: Any = None, model_type: str = "rerank", log_path: str | None = None,
                 trust_remote_code: bool = True, port: int | None = None, **kw):
        super().__init__(launcher=launcher, model_type="rerank", log_path=log_path,
                         trust_remote_code=trust_remote_code, port=port, **kw)
