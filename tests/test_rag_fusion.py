"""Fusion of BM25 and dense scores, the default-vs-best-single check and the team-written card corpora."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medqwen.rag.evaluate import compare_with_best_single
from medqwen.rag.retrieval import fuse_scores, minmax, zscore

REPO = Path(__file__).resolve().parents[1]


def test_zscore_fusion_lets_a_clear_lead_count_more_than_min_max_does():
    peaked = np.array([10.0, 1.2, 1.1, 1.0, 1.0, 1.0, 1.0, 1.0])  # BM25 with one clear match
    spread = np.linspace(0.86, 0.79, 8)[::-1].copy()  # a dense side that grades the candidates evenly
    assert minmax(peaked)[0] == minmax(spread).max() == 1.0  # min-max: both sides' best count the same
    assert zscore(peaked)[0] > 2.4 > 1.6 > zscore(spread).max()  # z-score: the standout counts more
    fused = fuse_scores(peaked, spread, [], [], list("abcdefgh"), "zscore", 0.4, 0.6, 60)
    assert fused == pytest.approx(0.4 * zscore(peaked) + 0.6 * zscore(spread))
    assert np.all(zscore(np.ones(3)) == 0)
    combmax = fuse_scores(peaked, spread, [], [], list("abcdefgh"), "zmax", 0.5, 0.5, 60)
    assert combmax == pytest.approx(np.maximum(0.5 * zscore(peaked), 0.5 * zscore(spread)))
    assert int(np.argmax(combmax)) == 0  # BM25's standout wins although its cosine is the lowest


def test_rrf_fusion_and_unknown_fusion():
    scores = fuse_scores(np.zeros(3), np.zeros(3), ["a", "b"], ["c", "a"], ["a", "b", "c"], "rrf", 1.0, 1.0, 60)
    assert scores[0] > scores[1] and scores[0] > scores[2]
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse_scores(np.zeros(1), np.zeros(1), [], [], ["a"], "max", 1, 1, 60)


def metrics(**kinds):
    return {kind: {"recall@5": value, "n": 10} for kind, value in kinds.items()}


def test_default_compared_with_best_single_flags_a_loss():
    results = {"bm25": metrics(all=0.9, named=0.8, symptoms=1.0), "dense": metrics(all=0.6, named=0.95, symptoms=0.3),
               "hybrid": metrics(all=0.92, named=0.945, symptoms=0.95)}
    versus = compare_with_best_single(results, "hybrid")
    rows = {r["kind"]: r for r in versus["kinds"]}
    assert rows["named"]["best_single"] == "dense" and rows["named"]["margin"] == pytest.approx(-0.005)
    assert rows["symptoms"]["best_single"] == "bm25" and rows["symptoms"]["margin"] == pytest.approx(-0.05)
    assert versus["beaten"] == ["symptoms"]  # -0.005 is within the tolerance, -0.05 is not
    results["hybrid"]["symptoms"]["recall@5"] = 1.0
    assert compare_with_best_single(results, "hybrid")["beaten"] == []
    assert compare_with_best_single(results, "bm25")["kinds"][0]["best_single"] == "dense"  # itself excluded


def test_card_corpora_are_reproducible_and_their_gold_ids_exist(tmp_path):
    subprocess.run([sys.executable, str(REPO / "data" / "make_rag_cards.py"), "--output_dir", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("disease_cards", "herb_cards"):
        shipped = REPO / "data" / "rag_cards"
        assert (tmp_path / name / f"{name}.jsonl").read_text() == (shipped / name / f"{name}.jsonl").read_text()
        assert (tmp_path / f"{name}_gold.jsonl").read_text() == (shipped / f"{name}_gold.jsonl").read_text()
        ids = {f"{name}/{json.loads(line)['id']}" for line in (shipped / name / f"{name}.jsonl").open()}
        gold = [json.loads(line) for line in (shipped / f"{name}_gold.jsonl").open()]
        assert len(gold) >= 90 and all(set(g["gold_ids"]) <= ids for g in gold)
        assert len({g["kind"] for g in gold}) >= 3


def test_retriever_zmax_fusion_scores_every_candidate(tmp_path):
    from medqwen.config import RagConfig
    from medqwen.rag import Retriever, index_paths, open_client, open_collection
    from tests.test_rag import write_corpus

    docs = tmp_path / "docs"
    write_corpus(docs)
    cfg = RagConfig(input=[str(docs)], persist_dir=str(tmp_path / "chroma"), collection="test", fusion="zmax",
                    bm25_weight=0.5, dense_weight=0.5)
    collection = open_collection(open_client(cfg, create=True), cfg, create=True)
    index_paths(collection, cfg.input, cfg, progress=False)
    retriever = Retriever(collection, cfg)
    query = "黄芪补气"
    vector = retriever.embed_query(query)
    bm25 = dict(zip(retriever.ids, retriever.bm25_scores(query)))
    candidates = list(bm25)  # 4 chunks, all candidates of both retrievers
    cos = dict(zip(candidates, retriever.cosines(vector, candidates)))
    expected = dict(zip(candidates, np.maximum(0.5 * zscore(np.array([bm25[c] for c in candidates])),
                                               0.5 * zscore(np.array([cos[c] for c in candidates])))))
    hits = retriever.search(query, k=4, method="hybrid")
    assert hits[0].source_id == "herbs/黄芪"
    assert {h.id: h.score for h in hits} == pytest.approx(expected, abs=1e-4)


def test_benchmark_flags_a_default_beaten_by_a_single_retriever(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "benchmark"))
    import benchmark_rag
    from medqwen.config import RagBenchConfig
    from tests.test_rag import write_corpus

    write_corpus(tmp_path / "docs")
    gold = tmp_path / "gold.jsonl"
    gold.write_text("\n".join(json.dumps(q, ensure_ascii=False) for q in [
        {"kind": "named", "question": "麻黄汤治什么？", "gold_ids": ["formulas/mahuang"]},
        {"kind": "english", "question": "ginseng tonic", "gold_ids": ["herbs/人参"]}]), encoding="utf-8")
    # BM25 as the default: it finds nothing for a question that shares no word with the corpus, dense does.
    cfg = RagBenchConfig(input=[str(tmp_path / "docs")], gold=str(gold), persist_dir=str(tmp_path / "chroma"),
                         output_dir=str(tmp_path / "out"), methods=["bm25", "dense"], retrieval="bm25",
                         bm25_shares=[], rrf_dense_weights=[], throughput_chunks=0, latency_docs=0)
    assert benchmark_rag.main(cfg) == 0
    versus = json.loads((tmp_path / "out" / "metrics.json").read_text())["summary"]["default_vs_best_single"]
    rows = {r["kind"]: r for r in versus["kinds"]}
    assert rows["english"] == {"kind": "english", "default": 0.0, "best_single": "dense", "best_single_value": 1.0,
                               "margin": -1.0}
    assert versus["beaten"] == ["all", "english"] and rows["named"]["margin"] == 0.0
    assert "WARNING: the default is beaten by a single retriever" in capsys.readouterr().out
