"""Retrieval evaluation: recall@k and MRR@10 against gold source ids, overall and per question kind, with latency.

Gold JSONL, one question per line: {"id": "tcm-001", "kind": "named", "question": "...", "gold_ids": ["书/篇"]}.
A question counts as found at rank r when the r-th retrieved chunk belongs to any of its gold sources.
Metrics are also split by the question's line number in the file: settings are chosen on the even lines and the
odd lines are reported as a held-out half, which says how much of a gain is fitted to the questions.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from medqwen.configlib import UserError
from medqwen.jsonl import iter_jsonl_objects, write_jsonl
from medqwen.rag.retrieval import Retriever, recall_mrr

KS = (1, 5, 10)


def load_gold(path: str | Path) -> list[dict]:
    """Gold questions; a malformed line raises with its file:line."""
    rows = []
    for number, row in iter_jsonl_objects(path):
        missing = [k for k in ("question", "gold_ids") if not row.get(k)]
        if missing:
            raise UserError(f"{path}:{number}: missing {missing}")
        row.setdefault("id", f"line{number}")
        row["half"] = "even lines" if number % 2 == 0 else "odd lines"
        row.setdefault("kind", "all")
        rows.append(row)
    return rows


def qa_retrieval_set(path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """A retrieval set from question/answer pairs: every distinct answer is a document (`answers/aNNNN`), its
    question the query. Reads ShareGPT lines ({"conversations": [human, gpt, ...]}) or {"问"/"question": ...,
    "答"/"answer": ...}; writes <out_dir>/answers.jsonl and gold.jsonl and returns their paths."""
    answers: dict[str, str] = {}  # answer text -> document id
    gold = []
    for number, record in iter_jsonl_objects(path):
        turns = record.get("conversations") or []
        question = next((t.get("value", "") for t in turns if t.get("from") in ("human", "user")),
                        record.get("问") or record.get("question") or "")
        answer = next((t.get("value", "") for t in turns if t.get("from") in ("gpt", "assistant")),
                      record.get("答") or record.get("answer") or "")
        if not str(question).strip() or not str(answer).strip():
            raise UserError(f"{path}:{number}: need a question and an answer (ShareGPT turns or 问/答 keys)")
        doc_id = answers.setdefault(answer.strip(), f"a{len(answers) + 1:04d}")
        gold.append({"id": f"qa-{number:04d}", "kind": "qa", "question": question.strip(),
                     "gold_ids": [f"answers/{doc_id}"]})
    out = Path(out_dir)
    corpus = write_jsonl(({"id": doc_id, "text": text} for text, doc_id in answers.items()), out / "answers.jsonl")
    return corpus, write_jsonl(gold, out / "gold.jsonl")


def evaluate(retriever: Retriever, gold: list[dict], **search_kwargs) -> dict:
    """Run every gold question through retriever.search(k=10, **search_kwargs); metrics, latency, per-question ranks."""
    retriever.search(gold[0]["question"], k=10, **search_kwargs)  # warm-up: loads models, builds BM25
    per_kind: dict[str, list[dict]] = defaultdict(list)
    latencies, rows = [], []
    for item in gold:
        start = time.perf_counter()
        hits = retriever.search(item["question"], k=max(KS), **search_kwargs)
        latencies.append((time.perf_counter() - start) * 1000)
        sources = [h.source_id for h in hits]
        metrics = recall_mrr(sources, set(item["gold_ids"]), KS)
        for group in ("all", item["kind"], item["half"], f"{item['kind']}/{item['half']}"):
            per_kind[group].append(metrics)
        rows.append({"id": item["id"], "kind": item["kind"], "metrics": metrics, "top_sources": sources,
                     "fusion": hits[0].fusion if hits else ""})
    summary = {kind: {name: round(float(np.mean([m[name] for m in ms])), 4) for name in ms[0]} | {"n": len(ms)}
               for kind, ms in per_kind.items()}
    return {"metrics": summary, "latency_ms": {"p50": round(float(np.percentile(latencies, 50)), 2),
                                               "p95": round(float(np.percentile(latencies, 95)), 2)},
            "questions": rows}


def measure_embedding_throughput(embedding, texts: list[str]) -> dict:
    """Documents (chunks) embedded per second from scratch, in batches of embedding.batch_size as indexing does,
    and tokens per second: the number that decides how fast indexing can be."""
    if not texts:
        return {}
    embedding(texts[:2])  # warm-up: loads the model
    start = time.perf_counter()
    for i in range(0, len(texts), embedding.batch_size):
        embedding(texts[i:i + embedding.batch_size])
    seconds = time.perf_counter() - start
    out = {"documents": len(texts), "seconds": round(seconds, 3), "docs_per_s": round(len(texts) / seconds, 2),
           "mean_chars": round(sum(map(len, texts)) / len(texts), 1), "batch_size": embedding.batch_size,
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS", f"unset ({os.cpu_count()} cores)")}
    tokens = sum(embedding.document_tokens(t) for t in texts)
    return out | {"mean_tokens": round(tokens / len(texts), 1), "tokens_per_s": round(tokens / seconds),
                  "precision": embedding.precision}


def compare_with_best_single(results: dict[str, dict], default: str, singles=("bm25", "dense"),
                             tolerance: float = 0.01, metric: str = "recall@5") -> dict:
    """The default method against the better single retriever on every question kind (`results`: method name ->
    evaluate()'s metrics). `beaten` lists the kinds where a single retriever beats the default by more than
    `tolerance`: the sign that the fusion weights do not suit this corpus."""
    present = [s for s in singles if s in results and s != default]
    rows, beaten = [], []
    for kind in sorted(k for k in results[default] if "lines" not in k):
        best = max(present, key=lambda s: results[s].get(kind, {}).get(metric, 0.0), default=None)
        if best is None:
            continue
        ours, theirs = results[default][kind][metric], results[best].get(kind, {}).get(metric, 0.0)
        rows.append({"kind": kind, "default": ours, "best_single": best, "best_single_value": theirs,
                     "margin": round(ours - theirs, 4)})
        if ours < theirs - tolerance:
            beaten.append(kind)
    return {"metric": metric, "tolerance": tolerance, "kinds": rows, "beaten": beaten}
