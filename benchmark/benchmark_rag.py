"""Retrieval benchmark: recall@1/5/10 and MRR@10 of BM25, dense and hybrid retrieval on a gold question set, per
question kind, with query latency and indexing throughput.

    python benchmark/benchmark_rag.py             # the shipped disease cards and their gold questions
    python benchmark/benchmark_rag.py --limit 10 --throughput_chunks 0 --latency_docs 0          # smoke run
    python benchmark/benchmark_rag.py --input my_docs/ --gold my_gold.jsonl --persist_dir out/bench_mine
    # the six classical books (docs/rag.md says where to get them) with their gold set:
    python benchmark/benchmark_rag.py --input tcm_books/ --gold data/rag_gold_tcm.jsonl --persist_dir out/bench_tcm
    # patient questions -> their doctors' answers (each answer a document; ShareGPT lines or 问/答 keys):
    python benchmark/benchmark_rag.py --output_dir out/benchmark/rag_qa --qa_pairs my_dialogues.sharegpt.jsonl

The corpus is indexed into --persist_dir first (idempotent: a second run embeds nothing), so the first run on a
CPU takes a while. Writes <output_dir>/config.yaml, metrics.json, questions.jsonl and recall_by_kind.png.
"""

import dataclasses
import sys
from pathlib import Path

from medqwen.cli import run_script
from medqwen.configlib import save_config
from medqwen.jsonl import write_jsonl
from medqwen.rag import Retriever, index_paths, make_embedding, open_client, open_collection
from medqwen.rag.config import RagBenchConfig
from medqwen.rag.documents import file_chunks
from medqwen.rag.evaluate import (
    KS,
    compare_with_best_single,
    evaluate,
    load_gold,
    measure_embedding_throughput,
    qa_retrieval_set,
)
from medqwen.rag.store import iter_files
from medqwen.reporting import markdown_table, write_metrics


def plot(results: dict, kinds: list[str], path: Path) -> None:
    """Grouped bars: recall@5 per question kind for every method."""
    from medqwen.reporting import pyplot, save_figure

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(results)), 3.5))
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        values = [r["metrics"].get(kind, {}).get("recall@5", 0) for r in results.values()]
        ax.bar([j + i * width for j in range(len(results))], values, width, label=kind)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(results))], list(results), rotation=20, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall@5")
    ax.legend(fontsize=8, ncol=len(kinds))
    save_figure(fig, path, dpi=120)


def latency_at_scale(client, collection, cfg: RagBenchConfig, gold: list[dict], documents: int) -> dict:
    """Copy the stored chunks (texts, metadata and embeddings) into a scratch collection until it holds
    `documents` entries, time each method there (query embedding included), drop it. Cost, not quality."""
    name = f"{cfg.collection}_latency"
    if name in [c.name for c in client.list_collections()]:
        client.delete_collection(name)
    scratch = client.create_collection(name, embedding_function=make_embedding(cfg),  # searched like the store
                                       configuration={"hnsw": {"space": "cosine", "ef_search": cfg.hnsw_ef_search}})
    got = collection.get(include=["documents", "metadatas", "embeddings"])
    copy = 0
    while scratch.count() < documents:
        n = min(len(got["ids"]), documents - scratch.count())
        for i in range(0, n, 1000):
            part = slice(i, min(i + 1000, n))
            scratch.add(ids=[f"{cid}-{copy}" for cid in got["ids"][part]], documents=got["documents"][part],
                        metadatas=got["metadatas"][part], embeddings=got["embeddings"][part])
        copy += 1
    try:
        retriever = Retriever(scratch, cfg)
        by_method = {m: evaluate(retriever, gold, method=m)["latency_ms"]
                     for m in dict.fromkeys([cfg.retrieval, *cfg.methods])}
        return {"documents": scratch.count(), "latency_ms": by_method[cfg.retrieval], "latency_ms_by_method": by_method}
    finally:
        client.delete_collection(name)


def main(cfg: RagBenchConfig) -> int:
    out = Path(cfg.output_dir)
    if cfg.qa_pairs:  # answers become the corpus (own collection), questions the gold set
        corpus, gold_path = qa_retrieval_set(cfg.qa_pairs, out / "qa_set")
        cfg = dataclasses.replace(cfg, input=[str(corpus)], gold=str(gold_path), collection=f"{cfg.collection}_qa")
    gold = load_gold(cfg.gold)[: cfg.limit]
    save_config(cfg, out / "config.yaml")

    client = open_client(cfg, create=True)
    collection = open_collection(client, cfg, create=True)
    indexing = index_paths(collection, cfg.input, cfg)
    print(f"indexed: {indexing.chunks_added} new chunks in {indexing.seconds:.1f} s; {indexing.chunks_total} in store")
    if indexing.errors:
        print("errors:\n  " + "\n  ".join(indexing.errors), file=sys.stderr)

    throughput = {}
    if cfg.throughput_chunks:  # embed a spread-out sample of corpus chunks from scratch
        chunks = [c.document for p, _ in iter_files(cfg.input)
                  for c in file_chunks(p, str(p), cfg.chunk_size, cfg.chunk_overlap, cfg.encoding)]
        step = max(1, len(chunks) // cfg.throughput_chunks)
        throughput = measure_embedding_throughput(make_embedding(cfg), chunks[::step][: cfg.throughput_chunks])
        print(f"embedding throughput: {throughput}")

    runs = {}  # name -> (config overrides, search kwargs)
    weights = f"bm25 {cfg.bm25_weight:g}, dense {cfg.dense_weight:g}"
    for method in cfg.methods:
        name = method if method != "hybrid" else (
            f"hybrid adaptive (threshold {cfg.adaptive_threshold:g}; unsure: score {weights}), default"
            if cfg.fusion == "adaptive" else f"hybrid {cfg.fusion} ({weights}), default")
        runs[name] = ({}, {"method": method})
    if "hybrid" in cfg.methods and cfg.fusion == "adaptive":  # its two choices alone, for every question
        runs["hybrid zmax (bm25 0.5, dense 0.5)"] = (
            {}, {"method": "hybrid", "fusion": "zmax", "bm25_weight": 0.5, "dense_weight": 0.5})
        runs[f"hybrid score ({weights})"] = ({}, {"method": "hybrid", "fusion": "score"})
    if "hybrid" in cfg.methods:
        for share in cfg.bm25_shares:
            runs[f"hybrid score (bm25 {share:g}, dense {1 - share:g})"] = (
                {}, {"method": "hybrid", "fusion": "score", "bm25_weight": share, "dense_weight": 1 - share})
        for weight in cfg.rrf_dense_weights:
            runs[f"hybrid rrf (bm25 1, dense {weight:g})"] = (
                {}, {"method": "hybrid", "fusion": "rrf", "bm25_weight": 1.0, "dense_weight": weight})
    if cfg.bm25_query_stopwords:  # what dropping question words from the BM25 query is worth
        for method in [m for m in cfg.methods if m in ("bm25", "hybrid")]:
            runs[f"{method} (question words kept)"] = ({"bm25_query_stopwords": False}, {"method": method})
    if cfg.max_chunks_per_source and "hybrid" in cfg.methods:  # what capping chunks per source is worth
        runs["hybrid (every chunk of a source)"] = ({"max_chunks_per_source": 0}, {"method": "hybrid"})
    for tokenizer in ("jieba",) if "bm25" in cfg.methods and cfg.bm25_tokenizer != "jieba" else ():
        runs[f"bm25 ({tokenizer})"] = ({"bm25_tokenizer": tokenizer}, {"method": "bm25"})

    results = {}
    retrievers = {}
    for name, (overrides, kwargs) in runs.items():
        key = tuple(sorted(overrides.items()))
        if key not in retrievers:
            retrievers[key] = Retriever(collection, dataclasses.replace(cfg, **overrides))
        results[name] = evaluate(retrievers[key], gold, **kwargs)
        print(f"{name}: {results[name]['metrics']['all']}  latency {results[name]['latency_ms']}")

    scale = {}
    if cfg.latency_docs > indexing.chunks_total > 0:  # query latency on a larger store: the corpus replicated
        scale = latency_at_scale(client, collection, cfg, gold, cfg.latency_docs)
        print(f"latency on {scale['documents']} documents ({cfg.retrieval}): {scale['latency_ms']}; by method: "
              f"{scale['latency_ms_by_method']}")

    kinds = sorted({g["kind"] for g in gold})
    halves = ["even lines", "odd lines"]
    headers = (["method"] + [f"R@{k}" for k in KS] + ["MRR@10"] + [f"R@5 {k}" for k in kinds]
               + [f"R@5 {h}" for h in halves] + ["p50 ms", "p95 ms"])
    rows = [[name] + [r["metrics"]["all"][f"recall@{k}"] for k in KS] + [r["metrics"]["all"]["mrr@10"]]
            + [r["metrics"].get(g, {}).get("recall@5", "-") for g in kinds + halves]
            + [r["latency_ms"]["p50"], r["latency_ms"]["p95"]]
            for name, r in results.items()]
    table = markdown_table(rows, headers)
    print(f"\n{len(gold)} questions, {indexing.chunks_total} chunks ({cfg.chunk_size} chars), top-k = chunks; "
          f"halves = even / odd lines of {cfg.gold}\n")
    print(table)

    write_jsonl(({"method": name, **row} for name, r in results.items() for row in r["questions"]),
                out / "questions.jsonl")
    plot(results, kinds, out / "recall_by_kind.png")
    default = next(n for n in results if n.startswith(cfg.retrieval)
                   and (cfg.retrieval != "hybrid" or n.endswith("default")))
    versus = compare_with_best_single({n: r["metrics"] for n, r in results.items()}, default)
    if versus["kinds"]:
        print(f"\ndefault ({default}) against the better single retriever, R@5 per kind:\n")
        print(markdown_table([[r["kind"], r["default"], f"{r['best_single']} {r['best_single_value']}", r["margin"]]
                              for r in versus["kinds"]], ["kind", "default", "best single", "margin"]))
    if versus["beaten"]:
        print(f"\nWARNING: the default is beaten by a single retriever by more than {versus['tolerance']} R@5 on: "
              f"{', '.join(versus['beaten'])}")
    adaptive = {}
    if cfg.retrieval == "hybrid" and cfg.fusion == "adaptive":
        retriever = retrievers[()]
        sure = [row["fusion"] == "zmax" for row in results[default]["questions"]]
        adaptive = {"bm25_reference_confidence": retriever.bm25_reference, "threshold": cfg.adaptive_threshold,
                    "bm25_sure_share": round(sum(sure) / max(len(sure), 1), 4)}
        print(f"\nadaptive fusion: BM25 reference confidence {adaptive['bm25_reference_confidence']} (median on "
              f"phrases copied from the store); BM25 sure (zmax) on {adaptive['bm25_sure_share']:.0%} of the "
              f"questions, dense-led score fusion on the rest")
    summary = {"default_method": default, **results[default]["metrics"]["all"], "default_vs_best_single": versus,
               "adaptive_fusion": adaptive,
               "latency_ms": results[default]["latency_ms"], "questions": len(gold),
               "chunks": indexing.chunks_total, "indexing": indexing.as_dict(), "embedding_throughput": throughput,
               "latency_at_scale": scale}
    detail = {name: {"metrics": r["metrics"], "latency_ms": r["latency_ms"]} for name, r in results.items()}
    write_metrics(out, summary, detail, meta_extra={"table": table})
    print(f"\nwrote {out}/metrics.json, questions.jsonl, recall_by_kind.png")
    return 0


if __name__ == "__main__":
    run_script(RagBenchConfig, main)
