"""Ask the knowledge store: retrieve sources (dense, BM25 or hybrid), answer with a model, print cited sources.

    python agent/rag_query.py                                           # interactive, vLLM at $VLLM_BASE_URL
    python agent/rag_query.py --query "桂枝汤主治什么？"
    python agent/rag_query.py --query "桂枝汤主治什么？" --retrieve_only  # sources only, no model
    python agent/rag_query.py --query "..." --backend local --model model/smollm2-135m-instruct
    python agent/rag_query.py --retrieval bm25 --top_k 3 --reranker BAAI/bge-reranker-base

Build the store first with agent/embedding.py (same --persist_dir / --collection / embedding flags).
"""

import sys
import time

from medqwen.cli import run_script
from medqwen.configlib import UserError
from medqwen.rag import Retriever, open_client, open_collection
from medqwen.rag.answer import GenerationError, QueryError, build_messages, check_query, format_sources, make_answerer
from medqwen.rag.config import RagConfig
from medqwen.repl import HELP, repl


def answer_one(question: str, retriever: Retriever, answerer, cfg: RagConfig) -> bool:
    """Retrieve, print the sources, then (unless retrieve-only) generate and print the answer; False on error."""
    try:
        question = check_query(question, cfg.max_query_chars)
    except QueryError as err:
        print(f"error: {err}", file=sys.stderr)
        return False
    start = time.perf_counter()
    hits = retriever.search(question, cfg.top_k)
    took_ms = (time.perf_counter() - start) * 1000
    how = f"{cfg.retrieval}, {hits[0].fusion}" if hits and hits[0].fusion else cfg.retrieval
    print(f"\nsources ({how}, {took_ms:.0f} ms):")
    for n, hit in enumerate(hits, start=1):
        ranks = ", ".join(f"{m} #{r}" for m, r in hit.ranks.items())
        print(f"  [{n}] {hit.source_id}  ({ranks})")
    if not hits:
        print("  (none matched)")
    if answerer is None:
        print("\n" + format_sources(hits))
        return True
    try:
        reply = answerer(build_messages(question, hits))
    except GenerationError as err:
        print(f"error: {err}", file=sys.stderr)
        return False
    print(f"\nanswer:\n{reply}")
    return True


def main(cfg: RagConfig) -> int:
    if cfg.query is not None and not cfg.query.strip():
        raise UserError("--query is empty; give a question, or leave --query out for the interactive mode")
    retriever = Retriever(open_collection(open_client(cfg), cfg), cfg)
    if len(retriever) == 0:
        raise UserError(f"the collection {cfg.collection!r} is empty: index documents with "
                        "`python agent/embedding.py --input <files or folders>`")
    print(f"store: {len(retriever)} chunks in {cfg.chroma_host or cfg.persist_dir} / {cfg.collection}")
    answerer = None if cfg.retrieve_only else make_answerer(cfg)
    if cfg.query is not None:
        return 0 if answer_one(cfg.query, retriever, answerer, cfg) else 1
    print(f"Ask a question ({HELP.split('; ')[1]}).")
    repl(lambda question: answer_one(question, retriever, answerer, cfg), prompt="\n问题> ")
    return 0


if __name__ == "__main__":
    run_script(RagConfig, main)
