"""Fusion of BM25 and dense scores (adaptive fusion: pseudo-queries, BM25 confidence, the per-query choice), the
default-vs-best-single check and the team-written card corpora."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medqwen.rag.evaluate import compare_with_best_single
from medqwen.rag.retrieval import (
    adaptive_choice,
    bm25_confidence,
    fuse_scores,
    minmax,
    pseudo_queries,
    reference_confidence,
    zscore,
)

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
    for name in ("disease_cards", "herb_cards", "disease_entries", "drug_leaflets"):
        shipped = REPO / "data" / "rag_cards"
        assert (tmp_path / name / f"{name}.jsonl").read_text() == (shipped / name / f"{name}.jsonl").read_text()
        assert (tmp_path / f"{name}_gold.jsonl").read_text() == (shipped / f"{name}_gold.jsonl").read_text()
        ids = {f"{name}/{json.loads(line)['id']}" for line in (shipped / name / f"{name}.jsonl").open()}
        gold = [json.loads(line) for line in (shipped / f"{name}_gold.jsonl").open()]
        assert len(gold) >= 90 and all(set(g["gold_ids"]) <= ids for g in gold)
        assert len({g["kind"] for g in gold}) >= 3


def test_retriever_zmax_fusion_scores_every_candidate(tmp_path):
    from medqwen.rag import Retriever, index_paths, open_client, open_collection
    from medqwen.rag.config import RagConfig
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

    from medqwen.rag.config import RagBenchConfig
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


# Team-written cards (short, not a clinical reference): enough phrases per chunk for pseudo-queries.
CARDS = [("flu", "流行性感冒", "发热、咳嗽、咽痛、肌肉酸痛", "呼吸内科", "奥司他韦、对乙酰氨基酚"),
         ("gastritis", "慢性胃炎", "上腹隐痛、饱胀、嗳气、反酸", "消化内科", "奥美拉唑、铝碳酸镁"),
         ("migraine", "偏头痛", "单侧搏动性头痛、畏光、恶心", "神经内科", "布洛芬、佐米曲普坦"),
         ("gout", "痛风", "第一跖趾关节红肿热痛、夜间发作", "内分泌科", "秋水仙碱、非布司他"),
         ("eczema", "湿疹", "皮肤瘙痒、红斑、丘疹、渗出", "皮肤科", "炉甘石洗剂、氯雷他定"),
         ("angina", "心绞痛", "胸骨后压榨性疼痛、活动后加重", "心血管内科", "硝酸甘油、阿司匹林"),
         ("cystitis", "膀胱炎", "尿频、尿急、尿痛、下腹不适", "肾内科", "呋喃妥因、左氧氟沙星"),
         ("conjunctivitis", "结膜炎", "眼红、眼痒、分泌物增多", "眼科", "妥布霉素滴眼液、玻璃酸钠滴眼液")]


def card_lines() -> str:
    return "".join(json.dumps({"id": key, "title": name, "text": f"{name}。主要症状：{symptoms}。"
                                                                 f"就诊科室：{department}。常用药物：{drugs}。"},
                              ensure_ascii=False) + "\n"
                   for key, name, symptoms, department, drugs in CARDS)


def test_pseudo_queries_copy_three_phrases_of_their_own_document():
    docs = ["卡片 · 甲\n甲病。主要症状：发热、咳嗽、咽痛。常用药物：奥司他韦。", "卡片 · 乙\n乙病，无。",
            "没有标题行：头痛、恶心、畏光、眩晕。"]
    queries = pseudo_queries(docs, n=10)
    assert queries == pseudo_queries(docs, n=10)  # deterministic
    assert sorted(row for row, _ in queries) == [0, 2]  # a body with fewer than three phrases gives none
    for row, query in queries:
        phrases = query.split("、")
        assert len(phrases) == 3 and all(p in docs[row].split("\n", 1)[-1] for p in phrases)
        assert "卡片" not in query  # the header line (title) is left out
    assert reference_confidence(docs[:2], lambda q: np.zeros(2), 50) is None  # no pseudo-query: no reference


def test_bm25_confidence_is_the_z_score_of_its_best_candidate():
    peaked = np.array([9.0, 1.0, 1.1, 0.9, 0.0, 1.0])
    flat = np.array([2.0, 1.9, 2.1, 2.0, 1.95, 0.0])
    assert bm25_confidence(peaked, 50) == pytest.approx(zscore(peaked[peaked > 0]).max())
    assert bm25_confidence(peaked, 50) > 1.9 > bm25_confidence(flat, 50) > 0
    assert bm25_confidence(peaked, 2) == pytest.approx(1.0)  # only the top `depth` candidates count
    assert bm25_confidence(np.array([0.0, 3.0, 0.0]), 50) == np.inf  # the only match
    assert bm25_confidence(np.zeros(3), 50) == bm25_confidence(np.ones(3), 50) == 0.0
    assert adaptive_choice(3.0, 4.0, 0.6) == "zmax" and adaptive_choice(2.0, 4.0, 0.6) == "score"
    assert adaptive_choice(0.0, None, 0.6) == "zmax"  # no reference: the balanced fusion


def test_adaptive_fusion_lets_a_sure_bm25_lead_and_dense_lead_otherwise(tmp_path):
    from dataclasses import replace

    from medqwen.rag import Retriever, index_paths, open_client, open_collection
    from medqwen.rag.config import RagConfig

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "cards.jsonl").write_text(card_lines(), encoding="utf-8")
    cfg = RagConfig(input=[str(docs)], persist_dir=str(tmp_path / "chroma"), collection="test")
    assert cfg.fusion == "adaptive"
    collection = open_collection(open_client(cfg, create=True), cfg, create=True)
    index_paths(collection, cfg.input, cfg, progress=False)
    retriever = Retriever(collection, cfg)
    reference = retriever.bm25_reference
    assert reference > 0

    shuffled = Retriever(collection, cfg)  # another load order: the same pseudo-queries, the same reference
    for name in ("ids", "documents", "metadatas"):
        setattr(shuffled, name, getattr(shuffled, name)[::-1])
    shuffled.row = {cid: i for i, cid in enumerate(shuffled.ids)}
    assert shuffled.bm25_reference == reference

    def fused(query, fusion, bm25_weight, dense_weight):
        vector = retriever.embed_query(query)
        bm25 = retriever.bm25_scores(query)
        ids = retriever.ids  # 8 chunks: every one is a candidate of both retrievers
        scores = fuse_scores(bm25, retriever.cosines(vector, ids), [], [], ids, fusion, bm25_weight, dense_weight, 60)
        return dict(zip(ids, scores))

    copied = "咳嗽、肌肉酸痛、奥司他韦"  # the card's own words: BM25 as sure as on a pseudo-query
    assert bm25_confidence(retriever.bm25_scores(copied), cfg.candidate_k) >= cfg.adaptive_threshold * reference
    hits = retriever.search(copied, k=8)
    assert hits[0].source_id == "cards/flu" and {h.fusion for h in hits} == {"zmax"}
    assert {h.id: h.score for h in hits} == pytest.approx(fused(copied, "zmax", 0.5, 0.5), abs=1e-4)

    own_words = "关节半夜疼得厉害"  # few of its words in any card: dense leads with the configured weights
    assert bm25_confidence(retriever.bm25_scores(own_words), cfg.candidate_k) < cfg.adaptive_threshold * reference
    hits = retriever.search(own_words, k=8)
    assert {h.fusion for h in hits} == {"score"}
    assert {h.id: h.score for h in hits} == pytest.approx(
        fused(own_words, "score", cfg.bm25_weight, cfg.dense_weight), abs=1e-4)
    assert Retriever(collection, replace(cfg, adaptive_threshold=0.0)).search(own_words, k=1)[0].fusion == "zmax"
