"""Which hybrid fusion holds on corpora it was not tuned on: every fusion setting on every corpus and question kind,
and leave-one-corpus-out selection (a setting is chosen on all corpora but one, then judged on the one left out).

    python benchmark/rag_fusion_study.py prepare --output_dir out/fusion     # chunks + questions of every corpus
    python benchmark/rag_fusion_study.py embed --output_dir out/fusion       # their e5 embeddings (GPU if any)
    python benchmark/rag_fusion_study.py study --output_dir out/fusion       # tables, metrics.json, config.yaml

The corpora: the six classical books (data/rag_gold_tcm.jsonl), modern patient questions -> doctors' answers
(the shared MedicalGPT pairs, 87 and 1K), and the team-written disease and herb cards (data/make_rag_cards.py). Retrieval is the library's:
the same chunking, BM25 (medqwen.rag.retrieval), fusion (`fuse_scores`), one chunk per source and recall; the dense
side is exact cosine search over the bundled e5-small's embeddings (Chroma's HNSW at ef 200 is near-exact).
A setting's worst margin is min over (corpus, kind) of R@5(setting) - max(R@5 bm25, R@5 dense); selection
maximises the worst margin on the training corpora (ties: the higher mean R@5). No gold question of the held-out
corpus is seen when its setting is chosen.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CORPORA = {  # name -> (inputs, gold)
    "classical books": (["../shared/data/rag_corpus/tcm_books"], "data/rag_gold_tcm.jsonl"),
    "modern QA 87": ("../shared/data/medical_dialogue/medicalgpt_medical_qa_87.jsonl", None),  # qa pairs
    "modern QA 1K": ("../shared/data/medical_dialogue/medicalgpt_medical_sft_1K.sharegpt.jsonl", None),
    "disease cards": (["data/rag_cards/disease_cards"], "data/rag_cards/disease_cards_gold.jsonl"),
    "herb cards": (["data/rag_cards/herb_cards"], "data/rag_cards/herb_cards_gold.jsonl"),
    "disease entries": (["data/rag_cards/disease_entries"], "data/rag_cards/disease_entries_gold.jsonl"),
}
SETTINGS = ([("score", w) for w in np.round(np.arange(0, 1.01, 0.1), 2)]
            + [("zscore", w) for w in np.round(np.arange(0, 1.01, 0.1), 2)]
            + [("zmax", w) for w in np.round(np.arange(0, 1.01, 0.1), 2)]
            + [("rrf", w) for w in (0.25, 0.5, 1.0)])


def prepare(args) -> None:
    from medqwen.rag.documents import file_chunks
    from medqwen.rag.evaluate import load_gold, qa_retrieval_set
    from medqwen.rag.store import iter_files

    out = Path(args.output_dir)
    for name, (inputs, gold_path) in CORPORA.items():
        if gold_path is None:  # question/answer pairs: answers are the corpus, questions the gold set
            corpus, gold_path = qa_retrieval_set(inputs, out / slug(name) / "qa_set")
            inputs = [str(corpus)]
        chunks = [c for p, _ in iter_files(inputs) for c in file_chunks(p, str(p), 200, 40)]
        gold = load_gold(gold_path)
        record = {"name": name, "inputs": inputs, "gold": str(gold_path),
                  "chunks": [{"document": c.document, "source_id": c.metadata["source_id"]} for c in chunks],
                  "questions": gold}
        (out / slug(name)).mkdir(parents=True, exist_ok=True)
        (out / slug(name) / "corpus.json").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        print(f"{name}: {len(chunks)} chunks, {len(gold)} questions")


def slug(name: str) -> str:
    return name.replace(" ", "_")


def embed(args) -> None:
    """Embeddings of chunks and questions with the default embedding (the store's: prefixes, engine, precision)."""
    from medqwen.config import RagConfig
    from medqwen.rag import make_embedding

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


def corpus_results(folder: Path, depth: int = 50, k: int = 5) -> dict:
    """R@5 per (setting | bm25 | dense) per kind on one corpus."""
    from medqwen.config import RagConfig
    from medqwen.rag.retrieval import (Bm25Index, bm25_tokens, fuse_scores, lexical_query, recall_mrr,
                                       top_rows)

    record = json.loads((folder / "corpus.json").read_text(encoding="utf-8"))
    docs, queries = np.load(folder / "chunks.npy"), np.load(folder / "queries.npy")
    sources = [c["source_id"] for c in record["chunks"]]
    index = Bm25Index([bm25_tokens(c["document"]) for c in record["chunks"]])
    rrf_k = RagConfig().rrf_k
    hits: dict[str, dict[str, list[float]]] = {}

    def recall(order: list[int], item: dict) -> float:
        seen, ranked = set(), []
        for row in order:  # one chunk per source, as the default max_chunks_per_source = 1
            if sources[row] not in seen:
                seen.add(sources[row])
                ranked.append(sources[row])
        return recall_mrr(ranked, set(item["gold_ids"]), ks=(k,))[f"recall@{k}"]

    for qi, item in enumerate(record["questions"]):
        bm25 = index.scores(bm25_tokens(lexical_query(item["question"])))
        cos = docs @ queries[qi]
        bm25_top = top_rows(bm25, depth)
        dense_top = np.argsort(-cos, kind="stable")[:depth].tolist()
        candidates = list(dict.fromkeys(bm25_top + dense_top))
        runs = {"bm25": bm25_top, "dense": dense_top}
        for fusion, share in SETTINGS:
            scores = fuse_scores(bm25[candidates], cos[candidates], bm25_top, dense_top, candidates,
                                 fusion, share, 1 - share if fusion != "rrf" else share, rrf_k)
            runs[f"{fusion} {share:g}"] = [candidates[i] for i in np.argsort(-scores, kind="stable")]
        for name, order in runs.items():
            for group in ("all", item["kind"]):
                hits.setdefault(name, {}).setdefault(group, []).append(recall(order, item))
    return {name: {g: round(float(np.mean(v)), 4) for g, v in groups.items()} for name, groups in hits.items()}


def margins(results: dict, setting: str) -> dict[str, float]:
    """kind -> R@5(setting) - max(R@5 bm25, R@5 dense)."""
    return {g: round(results[setting][g] - max(results["bm25"][g], results["dense"][g]), 4)
            for g in results[setting]}


def choose(per_corpus: dict, corpora: list[str]) -> str:
    names = [n for n in next(iter(per_corpus.values())) if n not in ("bm25", "dense")]

    def key(name):
        worst = min(min(margins(per_corpus[c], name).values()) for c in corpora)
        return worst, np.mean([per_corpus[c][name]["all"] for c in corpora])
    return max(names, key=key)


def study(args) -> None:
    from medqwen.reporting import markdown_table, write_metrics

    out = Path(args.output_dir)
    per_corpus = {}
    for folder in sorted(out.glob("*/corpus.json")):
        name = json.loads(folder.read_text(encoding="utf-8"))["name"]
        per_corpus[name] = corpus_results(folder.parent)
    corpora = list(per_corpus)
    rounds = []
    for held in corpora:
        chosen = choose(per_corpus, [c for c in corpora if c != held])
        rounds.append([held, chosen, min(margins(per_corpus[held], chosen).values()), per_corpus[held][chosen]["all"],
                       max(per_corpus[held]["bm25"]["all"], per_corpus[held]["dense"]["all"])])
    final = args.default or choose(per_corpus, corpora)
    rows = []
    for corpus, results in per_corpus.items():
        for kind in results["bm25"]:
            rows.append([corpus, kind, results["bm25"][kind], results["dense"][kind],
                         results["score 0.3"][kind], results[final][kind], margins(results, final)[kind]])
    table = markdown_table(rows, ["corpus", "kind", "bm25", "dense", "old default score 0.3", final,
                                  "margin vs best single"])
    loo = markdown_table(rounds, ["held-out corpus", "chosen on the others", "worst margin (held out)",
                                  "R@5 all (held out)", "best single R@5 all"])
    worst = {n: min(min(margins(r, n).values()) for r in per_corpus.values()) for n in per_corpus[corpora[0]]
             if n not in ("bm25", "dense")}
    sweep = markdown_table([[n, w] for n, w in sorted(worst.items(), key=lambda kv: -kv[1])],
                           ["setting (fusion, bm25 weight)", "worst margin over every corpus and kind"])
    print(table, loo, sweep, sep="\n\n")
    (out / "config.yaml").write_text(f"settings: {[f'{f} {w:g}' for f, w in SETTINGS]}\ndefault: {final}\n")
    write_metrics(out, {"default": final, "leave_one_corpus_out": rounds}, per_corpus,
                  meta_extra={"table": table, "leave_one_out": loo, "sweep": sweep})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["prepare", "embed", "study"], help="Which step to run (see above).")
    parser.add_argument("--output_dir", default="out/fusion_study", help="Folder of the per-corpus files and results.")
    parser.add_argument("--device", default=None, help="embed: device of the embedding model (None: its default).")
    parser.add_argument("--default", default=None, help="study: the setting shown as default (None: the one chosen "
                                                        "on every corpus).")
    args = parser.parse_args()
    {"prepare": prepare, "embed": embed, "study": study}[args.phase](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
