"""Which hybrid fusion holds on corpora it was not tuned on: every fusion setting on every corpus and question kind,
and leave-one-corpus-out selection (constants are chosen on all corpora but one, then judged on the one left out).

    python benchmark/rag_fusion_study.py prepare --output_dir out/fusion_study \
        --tcm_books DIR --qa medical_qa_87.jsonl --qa medical_sft_1K.jsonl       # chunks + questions of every corpus
    python benchmark/rag_fusion_study.py embed --output_dir out/fusion_study     # their embeddings (the default's)
    python benchmark/rag_fusion_study.py study --output_dir out/fusion_study     # tables, metrics.json, config.yaml

Corpora: the team-written disease cards, herb cards, disease entries and drug leaflets (data/make_rag_cards.py),
shipped; and, where you have them, the six classical books (`--tcm_books`, gold data/rag_gold_tcm.jsonl) and modern
patient questions -> doctors' answers (`--qa`, question/answer JSONL such as MedicalGPT's 87 and 1K pairs).
Retrieval is the library's: chunking, BM25, `fuse_scores`, the adaptive rule (`bm25_confidence`,
`reference_confidence`, `adaptive_choice`), one chunk per source and recall; the dense side is exact cosine search
over the stored embeddings (Chroma's HNSW at ef 200 is near-exact).

A setting's margin on a (corpus, kind) is R@5(setting) - max(R@5 bm25, R@5 dense); selection maximises the worst
margin over every kind of the training corpora, ties broken by the mean margin. Two families are selected this way:
fixed settings (fusion, BM25 weight) and the adaptive rule (threshold, BM25 weight when BM25 is unsure). No gold
question of the held-out corpus is seen when its constants are chosen; the library's defaults are the adaptive
choice on every corpus.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SHIPPED_CORPORA = {  # name -> (inputs, gold); gold None: question/answer pairs (answers the corpus, questions the gold)
    "disease cards": (["data/rag_cards/disease_cards"], "data/rag_cards/disease_cards_gold.jsonl"),
    "herb cards": (["data/rag_cards/herb_cards"], "data/rag_cards/herb_cards_gold.jsonl"),
    "disease entries": (["data/rag_cards/disease_entries"], "data/rag_cards/disease_entries_gold.jsonl"),
    "drug leaflets": (["data/rag_cards/drug_leaflets"], "data/rag_cards/drug_leaflets_gold.jsonl"),
}
SHARES = [round(float(w), 2) for w in np.arange(0, 1.01, 0.1)]
FIXED = [(f, w) for f in ("score", "zscore", "zmax") for w in SHARES] + [("rrf", w) for w in (0.25, 0.5, 1.0)]
THRESHOLDS = [round(float(t), 2) for t in np.arange(0.3, 0.81, 0.05)]
UNSURE_SHARES = [round(float(w), 2) for w in np.arange(0, 0.31, 0.05)]  # adaptive: BM25 weight when BM25 is unsure
OLD_DEFAULT = "score 0.3"


def prepare(args) -> None:
    from medqwen.rag.documents import file_chunks
    from medqwen.rag.evaluate import load_gold, qa_retrieval_set
    from medqwen.rag.store import iter_files

    out = Path(args.output_dir)
    corpora = dict(SHIPPED_CORPORA)
    if args.tcm_books:
        corpora["classical books"] = ([args.tcm_books], "data/rag_gold_tcm.jsonl")
    for path in args.qa:
        corpora[f"QA {Path(path).stem}"] = (path, None)
    if not args.tcm_books or not args.qa:
        print("not given, left out: " + ", ".join(name for name, given in (("--tcm_books", args.tcm_books),
                                                                         ("--qa", args.qa)) if not given))
    for name, (inputs, gold_path) in corpora.items():
        if gold_path is None:
            corpus, gold_path = qa_retrieval_set(inputs, out / slug(name) / "qa_set")
            inputs = [str(corpus)]
        chunks = [c for p, _ in iter_files(inputs) for c in file_chunks(p, str(p), 200, 40)]
        gold = load_gold(gold_path)
        record = {"name": name, "inputs": inputs, "gold": str(gold_path), "questions": gold,
                  "chunks": [{"id": c.id, "document": c.document, "source_id": c.metadata["source_id"]}
                             for c in chunks]}
        (out / slug(name)).mkdir(parents=True, exist_ok=True)
        (out / slug(name) / "corpus.json").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        print(f"{name}: {len(chunks)} chunks, {len(gold)} questions")


def slug(name: str) -> str:
    return name.replace(" ", "_")


def embed(args) -> None:
    """Embeddings of chunks and questions with the default embedding (the store's: prefixes, engine, precision)."""
    from medqwen.rag import make_embedding
    from medqwen.rag.config import RagConfig

    embedding = make_embedding(RagConfig(embedding_device=args.device))
    for path in sorted(Path(args.output_dir).glob("*/corpus.json")):
        if (path.parent / "queries.npy").exists():
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        docs = np.asarray(embedding([c["document"] for c in record["chunks"]]), dtype=np.float32)
        queries = np.asarray(embedding.embed_query([q["question"] for q in record["questions"]]), dtype=np.float32)
        np.save(path.parent / "chunks.npy", docs)
        np.save(path.parent / "queries.npy", queries)
        print(f"{record['name']}: {docs.shape} {queries.shape}")


def corpus_results(folder: Path, k: int = 5) -> tuple[dict, dict]:
    """R@5 per kind of bm25, dense, every fixed setting and every adaptive (threshold, share) on one corpus; and
    the corpus's BM25 reference confidence with the share of questions adaptive fusion found BM25 sure of."""
    from medqwen.rag.config import RagConfig
    from medqwen.rag.retrieval import (
        Bm25Index,
        adaptive_choice,
        bm25_confidence,
        bm25_tokens,
        fuse_scores,
        lexical_query,
        recall_mrr,
        reference_confidence,
        top_rows,
    )

    cfg = RagConfig()
    depth = cfg.candidate_k
    record = json.loads((folder / "corpus.json").read_text(encoding="utf-8"))
    docs, queries = np.load(folder / "chunks.npy"), np.load(folder / "queries.npy")
    chunks = record["chunks"]
    sources = [c["source_id"] for c in chunks]
    index = Bm25Index([bm25_tokens(c["document"]) for c in chunks])

    def bm25_scores(query: str) -> np.ndarray:
        return index.scores(bm25_tokens(lexical_query(query)))

    order = sorted(range(len(chunks)), key=lambda i: chunks[i]["id"])  # as the Retriever: by chunk id
    reference = reference_confidence([chunks[i]["document"] for i in order], bm25_scores, depth)

    def found(ranking: list[int], item: dict) -> float:
        seen, ranked = set(), []
        for row in ranking:  # one chunk per source, as the default max_chunks_per_source = 1
            if sources[row] not in seen:
                seen.add(sources[row])
                ranked.append(sources[row])
        return recall_mrr(ranked, set(item["gold_ids"]), ks=(k,))[f"recall@{k}"]

    hits: dict[str, dict[str, list[float]]] = {}
    sure = []
    for qi, item in enumerate(record["questions"]):
        bm25, cos = bm25_scores(item["question"]), docs @ queries[qi]
        bm25_top, dense_top = top_rows(bm25, depth), np.argsort(-cos, kind="stable")[:depth].tolist()
        candidates = list(dict.fromkeys(bm25_top + dense_top))

        def fused(fusion: str, share: float) -> list[int]:
            scores = fuse_scores(bm25[candidates], cos[candidates], bm25_top, dense_top, candidates, fusion,
                                 share, 1 - share if fusion != "rrf" else share, cfg.rrf_k)
            return [candidates[i] for i in np.argsort(-scores, kind="stable")]

        row = {"bm25": found(bm25_top, item), "dense": found(dense_top, item)}
        row |= {f"{f} {w:g}": found(fused(f, w), item) for f, w in FIXED}
        confidence = bm25_confidence(bm25, depth)
        sure.append(adaptive_choice(confidence, reference, cfg.adaptive_threshold) == "zmax")
        unsure = {w: row[f"score {w:g}"] if f"score {w:g}" in row else found(fused("score", w), item)
                  for w in UNSURE_SHARES}
        for t in THRESHOLDS:
            is_sure = adaptive_choice(confidence, reference, t) == "zmax"
            row |= {f"adaptive {t:g} {w:g}": row["zmax 0.5"] if is_sure else unsure[w] for w in UNSURE_SHARES}
        for name, value in row.items():
            for group in ("all", item["kind"]):
                hits.setdefault(name, {}).setdefault(group, []).append(value)
    results = {name: {g: round(float(np.mean(v)), 4) for g, v in groups.items()} for name, groups in hits.items()}
    return results, {"reference_confidence": reference, "sure_share": round(float(np.mean(sure)), 3)}


def margins(results: dict, setting: str) -> dict[str, float]:
    """kind -> R@5(setting) - max(R@5 bm25, R@5 dense)."""
    return {g: round(results[setting][g] - max(results["bm25"][g], results["dense"][g]), 4) for g in results[setting]}


def choose(per_corpus: dict, corpora: list[str], names: list[str]) -> str:
    """The setting with the best worst margin over every kind of `corpora`; ties: the best mean margin."""
    def key(name):
        values = [m for c in corpora for m in margins(per_corpus[c], name).values()]
        return min(values), np.mean(values)
    return max(names, key=key)


def study(args) -> None:
    from medqwen.rag.config import RagConfig
    from medqwen.reporting import markdown_table, write_metrics

    cfg = RagConfig()
    default = f"adaptive {cfg.adaptive_threshold:g} {cfg.bm25_weight:g}"
    out = Path(args.output_dir)
    per_corpus, calibration = {}, {}
    for folder in sorted(out.glob("*/corpus.json")):
        name = json.loads(folder.read_text(encoding="utf-8"))["name"]
        per_corpus[name], calibration[name] = corpus_results(folder.parent)
        print(f"{name}: reference confidence {calibration[name]['reference_confidence']:.2f}, "
              f"BM25 sure of {calibration[name]['sure_share']:.0%} of the questions", flush=True)
    corpora = list(per_corpus)
    names = list(next(iter(per_corpus.values())))
    families = {"fixed": [n for n in names if not n.startswith(("adaptive", "bm25", "dense"))],
                "adaptive": [n for n in names if n.startswith("adaptive")]}
    rounds = []
    for family, options in families.items():
        for held in corpora:
            chosen = choose(per_corpus, [c for c in corpora if c != held], options)
            held_margins = margins(per_corpus[held], chosen)
            kind = min(held_margins, key=held_margins.get)
            results = per_corpus[held]
            rounds.append([family, held, chosen, held_margins[kind], kind if held_margins[kind] < 0 else "",
                           results[chosen]["all"], max(results["bm25"]["all"], results["dense"]["all"])])
    chosen_all = {family: choose(per_corpus, corpora, options) for family, options in families.items()}
    rows = []
    for corpus, results in per_corpus.items():
        for kind in results["bm25"]:
            best = max(("bm25", "dense"), key=lambda m: results[m][kind])
            rows.append([corpus, kind, results["bm25"][kind], results["dense"][kind], results[OLD_DEFAULT][kind],
                         results[default][kind], f"{best} {results[best][kind]}", margins(results, default)[kind]])
    table = markdown_table(rows, ["corpus", "kind", "bm25", "dense", f"old default ({OLD_DEFAULT})",
                                  f"default ({default})", "best single", "gap"])
    loco = markdown_table(rounds, ["family", "held-out corpus", "chosen on the others", "worst margin (held out)",
                                   "at kind", "R@5 all (held out)", "best single R@5 all"])
    worst = {n: min(min(margins(r, n).values()) for r in per_corpus.values()) for n in names
             if n not in ("bm25", "dense")}
    sweep = markdown_table([[n, w] for n, w in sorted(worst.items(), key=lambda kv: -kv[1])[:15]],
                           ["setting", "worst margin over every corpus and kind"])
    print(table, loco, f"chosen on every corpus: {chosen_all}", sweep, sep="\n\n")
    (out / "config.yaml").write_text(f"fixed: {[f'{f} {w:g}' for f, w in FIXED]}\nthresholds: {THRESHOLDS}\n"
                                     f"unsure_shares: {UNSURE_SHARES}\ndefault: {default}\n")
    write_metrics(out, {"default": default, "chosen_on_every_corpus": chosen_all, "leave_one_corpus_out": rounds,
                        "calibration": calibration}, per_corpus,
                  meta_extra={"table": table, "leave_one_out": loco, "sweep": sweep})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["prepare", "embed", "study"], help="Which step to run (see above).")
    parser.add_argument("--output_dir", default="out/fusion_study", help="Folder of the per-corpus files and results.")
    parser.add_argument("--device", default=None, help="embed: device of the embedding model (None: its default).")
    parser.add_argument("--tcm_books", default=None, help="prepare: folder of the six classical books that "
                        "data/rag_gold_tcm.jsonl asks about (left out when not given).")
    parser.add_argument("--qa", action="append", default=[], help="prepare: a question/answer JSONL to use as a "
                        "patient question -> answer corpus (repeatable; none when not given).")
    args = parser.parse_args()
    {"prepare": prepare, "embed": embed, "study": study}[args.phase](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
