"""``Infinity``: embeddings and reranking served by ``infinity_emb v2`` (Infinity 0.0.78), in its own environment.

    server = Infinity(model_type='embed', port=8080)
    server.cmd('infra/models/all-minilm-l6-v2')   # Command: infinity_emb v2 --model-id ... --port 8080 ...
    Infinity.extract_result(response_text, {'input': 'a'})   # the embedding, as the reference package returns it

Keywords as the contract has them (``host``, ``port``, ``batch-size`` / ``batch_size``, and the rest of
``infinity_emb v2``'s options, dashed or underscored). The API key goes in ``INFINITY_API_KEY`` (never the argv);
readiness is ``GET /health``; the routes are ``/embeddings`` and ``/rerank`` under the served model name.
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from tasks import envs
from tasks.core import Command, check_kwargs
from tasks.deploy.base import DeployParams, LazyLLMDeployBase, model_to_serve
from tasks.deploy.embed import RetrievalSmoke

log = logging.getLogger(__name__)


class InfinityParams(DeployParams):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model_type: Literal["embed", "rerank"] = "embed"
    batch_size: int = Field(256, ge=1, alias="batch-size")
    engine: Literal["torch", "optimum", "ctranslate2"] = "torch"
    device: Literal["cpu", "cuda", "auto"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = "auto"
    pooling_method: Literal["mean", "cls", "auto"] = Field("auto", alias="pooling-method")
    model_warmup: bool = Field(False, alias="model-warmup")
    ready_timeout_s: float = 180


class Infinity(RetrievalSmoke, LazyLLMDeployBase):
    engine: ClassVar[str] = "infinity"
    Params: ClassVar[type[DeployParams]] = InfinityParams
    environment: ClassVar[str | None] = "infinity"
    api_key_env: ClassVar[str | None] = "INFINITY_API_KEY"
    serves: ClassVar[tuple[str, ...]] = ("embed", "rerank")
    embeddings_path: ClassVar[str] = "/embeddings"
    rerank_path: ClassVar[str] = "/rerank"
    default_name: ClassVar[str] = "fineflow-embed"

    def __init__(self, launcher: Any = None, model_type: str = "embed", log_path: str | None = None, **kw):
        names = {f.alias or n for n, f in InfinityParams.model_fields.items()} | set(InfinityParams.model_fields)
        check_kwargs(type(self).__name__, kw, ("host", "port", "name", "prompt_style", *names))
        super().__init__(launcher=launcher, host=kw.get("host"), port=kw.get("port"), name=kw.get("name"),
                         prompt_style=kw.get("prompt_style"))
        self.params = InfinityParams(model_type=model_type, **{k: v for k, v in kw.items() if k in names})
        self.model_type, self.log_path = self.params.model_type, log_path

    def geturl(self, job: Any = None) -> str:
        return f"{self.url()}/{'rerank' if self.model_type == 'rerank' else 'embeddings'}"

    def cmd(self, finetuned_model: str | None = None, base_model: str | None = None,
            master_ip: str | None = None) -> Command:
        self.single_node(master_ip)
        model = model_to_serve("Infinity", finetuned_model, base_model)
        if model != finetuned_model:
            log.warning("no weights in the finetuned model %s: serving the base model %s", finetuned_model, model)
        p = self.params
        argv = [envs.bin_path(self.environment, "infinity_emb"), "v2", "--model-id", model,
                "--served-model-name", self.name, "--host", self.host, "--port", str(self.listen_port()),
                "--batch-size", str(p.batch_size), "--engine", p.engine, "--device", p.device, "--dtype", p.dtype,
                "--pooling-method", p.pooling_method, "--no-bettertransformer",
                "--model-warmup" if p.model_warmup else "--no-model-warmup"]
        # No telemetry, no hub: a model served from a path needs neither.
        return self.server_command(argv, {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
                                          "DO_NOT_TRACK": "1"})

    @staticmethod
    def extract_result(x, inputs):
        """Embeddings as a JSON list (one vector for a single string input), or rerank ``[(index, score)]``."""
        data = x.json() if hasattr(x, "json") else json.loads(x)
        kind = data["object"]
        if kind == "list":
            kind = data["data"][0]["object"]
        if kind == "embedding":
            vectors = [item["embedding"] for item in data["data"]]
            if len(vectors) == 1 and isinstance((inputs or {}).get("input"), str):
                vectors = vectors[0]
            return json.dumps(vectors)
        return [(r["index"], r["relevance_score"]) for r in data["results"]]


def infinity(**kw) -> Infinity:
    return Infinity(**kw)
