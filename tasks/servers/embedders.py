"""The contract's embedding and reranking models (``lazyllm.components.deploy.embed``), loaded lazily.

Called as the reference package calls them: ``HuggingFaceEmbedding(path)({'text': 'a', 'images': []})`` is the
embedding as a JSON string (a list of them for a list of texts); ``LazyHuggingFaceRerank(path)({'query': q,
'documents': [...], 'top_n': 2})`` is ``[(index, score), ...]``, best first. The built-in server
(``embed.py``) calls ``encode`` and ``score`` on them.

Pooling: a model with a sentence-transformers layout (``modules.json``, which fineflow writes into every embedder
it trains) is pooled the way it says; one without is pooled on its first token and normalised, as the reference
package's default does.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

from tasks.launchers import cuda_available

# sentence-transformers' pooling modes, as its Pooling config names them (fineflow writes them: finetune/st_layout).
POOLING_MODES = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
                 "last_token": "pooling_mode_lasttoken"}


class AbstractEmbedding(ABC):
    def __init__(self, base_embed: str, source: str | None = None, init: bool = False):
        self._base_embed, self._source = base_embed, source
        self._lock, self._loaded = threading.Lock(), False
        if init:
            self._ensure()

    @abstractmethod
    def load_embed(self) -> None: ...

    def _ensure(self) -> None:
        with self._lock:
            if not self._loaded:
                self.load_embed()
                self._loaded = True

    @abstractmethod
    def encode(self, texts: list[str]) -> list:
        """One embedding per text: a list of floats (dense) or a ``{token: weight}`` dict (sparse)."""

    def __call__(self, data: dict[str, Any] | str) -> str:
        self._ensure()
        text = data["text"] if isinstance(data, dict) else data
        out = self.encode([text] if isinstance(text, str) else list(text))
        return json.dumps(out[0] if isinstance(text, str) else out, default=float)

    def __reduce__(self):
        return type(self), (self._base_embed, self._source, self._loaded)


class LazyHuggingFaceDefaultEmbedding(AbstractEmbedding):
    def load_embed(self) -> None:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

        if (Path(self._base_embed) / "modules.json").is_file():
            self._model = SentenceTransformer(self._base_embed, device=_device())
        else:
            body = Transformer(self._base_embed, max_seq_length=512)
            pool = Pooling(body.get_embedding_dimension(), pooling_mode="cls")
            self._model = SentenceTransformer(modules=[body, pool, Normalize()], device=_device())
        self.dimension = self._model.get_embedding_dimension()
        self.max_tokens = self._model.max_seq_length  # where the encoder truncates a text

    def encode(self, texts: list[str]) -> list[list[float]]:
        self._ensure()
        return self._model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True).tolist()


class HuggingFaceEmbedding:
    """Chooses the implementation for a model id (``register``), the default for any other."""

    _model_id_mapping: dict[str, type[AbstractEmbedding]] = {}

    @classmethod
    def get_emb_cls(cls, model_name: str) -> type[AbstractEmbedding]:
        model_id = Path(model_name.rstrip("/")).name
        return cls._model_id_mapping.get(model_id, LazyHuggingFaceDefaultEmbedding)

    @classmethod
    def register(cls, model_ids: list[str]) -> Callable[[type], type]:
        def decorator(target: type) -> type:
            for model_id in model_ids:
                cls._model_id_mapping[model_id] = target
            return target
        return decorator

    def __init__(self, base_embed: str, source: str | None = None):
        self._embed = self.get_emb_cls(base_embed)(base_embed, source)

    def load_embed(self) -> None:
        self._embed._ensure()

    def encode(self, texts: list[str]) -> list:
        return self._embed.encode(texts)

    @property
    def dimension(self) -> int:
        self.load_embed()
        return self._embed.dimension

    @property
    def max_tokens(self) -> int:
        self.load_embed()
        return self._embed.max_tokens

    def __call__(self, *args, **kw) -> str:
        return self._embed(*args, **kw)


class LazyFlagEmbedding(AbstractEmbedding):
    """FlagEmbedding's model (``FlagAutoModel``): dense vectors, or with ``sparse=True`` lexical weights
    ``{token: weight}`` (a BGE-M3 model). Needs the ``flagembedding`` environment."""

    def __init__(self, base_embed: str, sparse: bool = False, source: str | None = None, init: bool = False):
        self.sparse = sparse
        super().__init__(base_embed, source, init)

    def load_embed(self) -> None:
        try:
            from FlagEmbedding import FlagAutoModel
            from FlagEmbedding.inference.embedder.model_mapping import AUTO_EMBEDDER_MAPPING
        except ImportError as e:
            raise RuntimeError(f"FlagEmbedding is not installed in this Python ({e}): the flagembedding engine and "
                               "sparse embeddings run in FlagEmbedding's own environment, where the deploy step "
                               "starts them") from e

        kw: dict[str, Any] = {}
        if Path(self._base_embed).name not in AUTO_EMBEDDER_MAPPING:
            # A model FlagEmbedding does not know by name (any finetuned one): say what it is, pooled as trained.
            kw = {"model_class": "encoder-only-m3" if self.sparse else "encoder-only-base",
                  "pooling_method": pooling_of(self._base_embed), "trust_remote_code": False,
                  "query_instruction_format": "{}{}"}
        self._model = FlagAutoModel.from_finetuned(self._base_embed, use_fp16=False, devices=[_device()], **kw)
        self.dimension = self._model.model.config.hidden_size
        self.max_tokens = self._model.passage_max_length

    def encode(self, texts: list[str]) -> list:
        self._ensure()
        out = self._model.encode(texts, return_sparse=self.sparse, return_dense=not self.sparse)
        if self.sparse:
            return [{str(k): float(v) for k, v in w.items()} for w in out["lexical_weights"]]
        return out["dense_vecs"].tolist()

    @classmethod
    def rebuild(cls, base_embed: str, sparse: bool, init: bool) -> "LazyFlagEmbedding":
        return cls(base_embed, sparse, init=init)

    def __reduce__(self):
        return LazyFlagEmbedding.rebuild, (self._base_embed, self.sparse, self._loaded)


class LazyHuggingFaceRerank:
    """A sentence-transformers ``CrossEncoder``: scores (query, document) pairs; the call sorts by score."""

    def __init__(self, base_rerank: str, source: str | None = None, init: bool = False):
        self.base_rerank, self.source = base_rerank, source
        self._lock, self.reranker = threading.Lock(), None
        if init:
            self.load_reranker()

    def load_reranker(self) -> None:
        from sentence_transformers import CrossEncoder

        with self._lock:
            if self.reranker is None:
                self.reranker = CrossEncoder(self.base_rerank, device=_device())

    @property
    def max_tokens(self) -> int:
        """Where the cross-encoder truncates a (query, document) pair."""
        self.load_reranker()
        return self.reranker.max_seq_length

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        self.load_reranker()
        return [float(s) for s in self.reranker.predict(pairs, batch_size=64, convert_to_numpy=True)]

    def __call__(self, inps: dict[str, Any]) -> list[tuple[int, float]]:
        query, documents, top_n = inps["query"], inps["documents"], inps.get("top_n", 1)
        scores = self.score([(query, d) for d in documents])
        ranked = sorted(enumerate(scores), key=lambda p: -p[1])
        return ranked[:top_n] if top_n > 0 else ranked

    @classmethod
    def rebuild(cls, base_rerank: str, init: bool) -> "LazyHuggingFaceRerank":
        return cls(base_rerank, init=init)

    def __reduce__(self):
        return LazyHuggingFaceRerank.rebuild, (self.base_rerank, self.reranker is not None)


def pooling_of(model_path: str) -> str:
    """How a model's sentence-transformers layout pools (``cls`` without one, as FlagEmbedding's encoders)."""
    config = Path(model_path) / "1_Pooling" / "config.json"
    data = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    if data.get("pooling_mode") in POOLING_MODES:  # sentence-transformers 6 writes the mode's name
        return data["pooling_mode"]
    return next((name for name, key in POOLING_MODES.items() if data.get(key)), "cls")


def _device() -> str:
    return "cuda" if cuda_available() else "cpu"
