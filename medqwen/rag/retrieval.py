"""Retrieval over a Chroma collection: dense (the collection's embeddings), BM25 (character n-grams or jieba words,
built in memory from the collection's texts when the retriever starts), and their fusion, optionally reordered by
a cross-encoder.

    retriever = Retriever(collection, cfg)
    hits = retriever.search("桂枝汤主治什么？", k=5)          # cfg.retrieval: dense | bm25 | hybrid
    hits[0].metadata["source_id"], hits[0].document

Fusion (cfg.fusion). Every candidate of either retriever (top candidate_k of each) gets both scores, BM25 and
cosine (a candidate only one retriever found is scored by the other too: its embedding is fetched). `score`: each
score min-max normalised over the candidates, weighted sum. `zscore`: z-scores, weighted sum. `zmax`: the larger of
the weighted z-scores (CombMAX). `rrf`: sum_m w_m / (rrf_k + rank_m(d)), which only sees ranks.

`adaptive` (default) picks one of two per query, from how sure BM25 is. Its confidence is the z-score of its best
score among its top candidates; the reference is the median confidence on pseudo-queries that copy three phrases of
a chunk of this very collection, computed with the BM25 index (deterministic, no gold question, nothing stored).
At or above `adaptive_threshold` x the reference, BM25 has found what a copied phrase finds and `zmax` with equal
weights lets its standout lead while dense's own standouts stay in the top k; below it, the question shares few of
its words with any chunk (a paraphrase, a patient's own words) and `score` fusion led by dense decides. Why and
how it was chosen (leave-one-corpus-out over seven corpora): docs/rag.md.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from medqwen.rag.config import RagConfig

_NOT_A_WORD = re.compile(r"[\W_]+")
_HAN_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_LATIN_WORD = re.compile(r"[a-zA-Z0-9]+")
BM25_TOKENIZERS = ("char", "jieba", "jieba+char")
# Words that frame a question but name nothing: interrogatives, sentence-final particles and the commonest modern
# function characters. Classical text hardly uses the modern ones, so BM25 would give them a high idf and rank any
# passage that happens to use them (a preface, a commentary) above the one the question describes.
QUERY_STOPWORDS = re.compile(r"为什么|为何|什么|哪些|哪个|哪种|哪一|哪里|哪儿|哪|如何|怎么样|怎么|怎样|"
                             r"是否|是不是|有没有|多少|请问|吗|呢|吧|啊|的|了|这|那|们")


def char_ngrams(text: str) -> list[str]:
    """Chinese characters and character bigrams, plus lower-cased Latin words/numbers (no dictionary needed).

    Single characters carry meaning in classical Chinese and match modern paraphrases; bigrams keep names
    (桂枝, 大黄) and formulas precise. Segmenters trained on modern text split classical text poorly.
    """
    tokens: list[str] = []
    for run in _HAN_RUN.findall(text):
        tokens += list(run) + [run[i:i + 2] for i in range(len(run) - 1)]
    return tokens + [w.lower() for w in _LATIN_WORD.findall(text)]


def jieba_words(text: str) -> list[str]:
    """jieba search-mode words (words plus their sub-words), lower-cased, punctuation dropped."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [t.lower() for t in jieba.lcut_for_search(text) if t.strip() and not _NOT_A_WORD.fullmatch(t)]


def lexical_query(question: str) -> str:
    """The question as BM25 sees it: question words and particles replaced by a space (no bigram spans them)."""
    return QUERY_STOPWORDS.sub(" ", question)


def bm25_tokens(text: str, tokenizer: str = "char") -> list[str]:
    """Tokens for BM25: char (unigrams + bigrams), jieba (words), or jieba+char (both)."""
    if tokenizer == "char":
        return char_ngrams(text)
    if tokenizer == "jieba":
        return jieba_words(text)
    if tokenizer == "jieba+char":
        return jieba_words(text) + char_ngrams(text)
    raise ValueError(f"unknown BM25 tokenizer {tokenizer!r}: use one of {BM25_TOKENIZERS}")


class Bm25Index:
    """Okapi BM25 (k1, b; Lucene's non-negative idf) as one sparse doc x term weight matrix: a query sums columns."""

    def __init__(self, token_lists: list[list[str]], k1: float = 1.5, b: float = 0.75):
        from scipy.sparse import csc_matrix

        counts = [Counter(tokens) for tokens in token_lists]
        # Terms in sorted order, not first-seen order: a query then sums its columns in the same order however the
        # documents are ordered, so scores are bit-for-bit the same for any load order.
        self.vocab: dict[str, int] = {t: i for i, t in enumerate(sorted(set().union(*counts)))}
        rows, cols, tfs = [], [], []
        lengths = np.array([len(tokens) for tokens in token_lists], dtype=np.float64)
        for row, counter in enumerate(counts):
            for token, count in counter.items():
                rows.append(row)
                cols.append(self.vocab[token])
                tfs.append(count)
        rows_a, cols_a, tf = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64), np.array(tfs, float)
        n = max(len(token_lists), 1)
        df = np.bincount(cols_a, minlength=len(self.vocab)) if len(cols_a) else np.zeros(0)
        idf = np.log1p((n - df + 0.5) / (df + 0.5))
        norm = k1 * (1 - b + b * lengths / max(lengths.mean() if len(lengths) else 1.0, 1e-9))
        weights = idf[cols_a] * tf * (k1 + 1) / (tf + norm[rows_a]) if len(cols_a) else tf
        self.matrix = csc_matrix((weights, (rows_a, cols_a)), shape=(len(token_lists), len(self.vocab)))

    def scores(self, tokens: list[str]) -> np.ndarray:
        """BM25 score of every document for the query tokens (repeated query terms count once)."""
        cols = sorted({self.vocab[t] for t in tokens if t in self.vocab})
        if not cols:
            return np.zeros(self.matrix.shape[0])
        return np.asarray(self.matrix[:, cols].sum(axis=1)).ravel()

    def top(self, tokens: list[str], k: int) -> list[int]:
        """Row indices of the k best-scoring documents with a positive score, best first."""
        return top_rows(self.scores(tokens), k)


def top_rows(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest positive scores, best first."""
    k = min(k, int((scores > 0).sum()))
    if k == 0:
        return []
    best = np.argpartition(-scores, k - 1)[:k]
    return best[np.argsort(-scores[best], kind="stable")].tolist()


def minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over the candidates (all equal -> all 1), so BM25 and cosine scores can be added."""
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.ones_like(values)


def zscore(values: np.ndarray) -> np.ndarray:
    """Standardise over the candidates (all equal -> all 0). Min-max gives each retriever's best candidate 1 however
    it stands; here a best candidate far above the rest (BM25 matching a rare name) gets a large value, one merely
    first of an evenly graded list about 1.7, so each side's say follows its confidence on this query."""
    std = float(values.std())
    return (values - values.mean()) / std if std > 0 else np.zeros_like(values)


NORMALIZERS = {"score": minmax, "zscore": zscore, "zmax": zscore}
FUSIONS = ("adaptive", "score", "zscore", "zmax", "rrf")
PSEUDO_QUERIES = 200  # per collection; other seeds or 100-400 queries moved the median by <= 10%, no R@5 changed
_PHRASE_BREAK = re.compile(r"[\s，。、；：！？,.;:!?（）()《》“”\"'·\-]+")


def pseudo_queries(documents: list[str], n: int = PSEUDO_QUERIES, seed: int = 0) -> list[tuple[int, str]]:
    """Up to n (row, query) pairs: three random phrases (2-12 characters between punctuation) of a document's body
    (the header line left out), joined as a list: a question that copies the document's own words. Deterministic
    for the same documents in the same order."""
    rng = random.Random(seed)
    rows = list(range(len(documents)))
    rng.shuffle(rows)
    queries = []
    for row in rows:
        body = documents[row].split("\n", 1)[-1]
        phrases = [p for p in _PHRASE_BREAK.split(body) if 2 <= len(p) <= 12]
        if len(phrases) >= 3:
            queries.append((row, "、".join(rng.sample(phrases, 3))))
            if len(queries) == n:
                break
    return queries


def bm25_confidence(scores: np.ndarray, depth: int) -> float:
    """How far BM25's best chunk stands above its other top-`depth` candidates: the z-score of the best positive
    score among them (inf when a single chunk matches, 0 when none or all tie)."""
    top = scores[top_rows(scores, depth)]
    if len(top) < 2:
        return math.inf if len(top) else 0.0
    std = float(top.std())
    return float((top[0] - top.mean()) / std) if std > 0 else 0.0


def reference_confidence(documents: list[str], bm25_scores, depth: int) -> float | None:
    """Median BM25 confidence on pseudo-queries copied from the documents (`bm25_scores(query)` -> every
    document's score); None when the documents are too few or too short for a finite median."""
    confidences = [bm25_confidence(bm25_scores(query), depth) for _, query in pseudo_queries(documents)]
    median = float(np.median(confidences)) if confidences else math.inf
    return median if 0 < median < math.inf else None


def adaptive_choice(confidence: float, reference: float | None, threshold: float) -> str:
    """`zmax` when BM25 is at least `threshold` x as sure as on a copied phrase (or no reference exists: the
    balanced choice), else `score` (led by the dense side through the configured weights)."""
    return "zmax" if reference is None or confidence >= threshold * reference else "score"


def fuse_scores(bm25: np.ndarray, cosine: np.ndarray, bm25_ranking: list, dense_ranking: list, candidates: list,
                fusion: str, bm25_weight: float, dense_weight: float, rrf_k: int) -> np.ndarray:
    """Fused score of every candidate (higher is better) from its BM25 score and cosine (arrays aligned with
    `candidates`) or, for rrf, its ranks in the two rankings. score: weighted sum of min-max-normalised scores;
    zscore: weighted sum of z-scores; zmax: the larger of the weighted z-scores (CombMAX)."""
    if fusion == "rrf":
        fused = dict(weighted_rrf({"bm25": bm25_ranking, "dense": dense_ranking},
                                  {"bm25": bm25_weight, "dense": dense_weight}, rrf_k))
        return np.array([fused.get(c, 0.0) for c in candidates])
    if fusion not in NORMALIZERS:  # adaptive is resolved per query first (adaptive_choice)
        raise ValueError(f"unknown fusion {fusion!r}: use one of {(*NORMALIZERS, 'rrf')}")
    normalize = NORMALIZERS[fusion]
    if fusion == "zmax":  # the more confident side decides: a clear BM25 match is not diluted by a flat cosine
        return np.maximum(bm25_weight * normalize(np.asarray(bm25, float)),
                          dense_weight * normalize(np.asarray(cosine, float)))
    return bm25_weight * normalize(np.asarray(bm25, float)) + dense_weight * normalize(np.asarray(cosine, float))


def weighted_rrf(rankings: dict[str, list[str]], weights: dict[str, float], rrf_k: int) -> list[tuple[str, float]]:
    """Weighted reciprocal-rank fusion of ranked id lists (rank 1 = best); ties keep first-seen order."""
    scores: dict[str, float] = {}
    for method, ids in rankings.items():
        for rank, doc_id in enumerate(ids, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + weights.get(method, 1.0) / (rrf_k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


@dataclass
class Hit:
    id: str
    document: str
    metadata: dict
    score: float
    ranks: dict[str, int] = field(default_factory=dict)  # method -> 1-based rank among its candidates
    fusion: str = ""  # how a hybrid search merged the two (adaptive: the fusion it chose for this query)

    @property
    def source_id(self) -> str:
        return self.metadata.get("source_id", self.id)


class Retriever:
    """Loads the collection's texts once (for BM25 and for returning hits), then answers queries."""

    def __init__(self, collection, cfg: RagConfig, page: int = 5000):
        self.collection, self.cfg = collection, cfg
        self.ids: list[str] = []
        self.documents: list[str] = []
        self.metadatas: list[dict] = []
        offset = 0
        while True:  # paged: Chroma caps one get()
            got = collection.get(include=["documents", "metadatas"], limit=page, offset=offset)
            self.ids += got["ids"]
            self.documents += got["documents"]
            self.metadatas += got["metadatas"]
            if len(got["ids"]) < page:
                break
            offset += page
        self.row = {cid: i for i, cid in enumerate(self.ids)}
        self._bm25: Bm25Index | None = None
        self._embedding = None  # the query encoder, made on first use
        self._reranker = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def bm25(self) -> Bm25Index:
        if self._bm25 is None:
            self._bm25 = Bm25Index([bm25_tokens(d, self.cfg.bm25_tokenizer) for d in self.documents])
        return self._bm25

    @functools.cached_property
    def bm25_reference(self) -> float | None:
        """Median BM25 confidence on phrases copied from this collection (see adaptive fusion), None if too small.
        Computed on first use: only adaptive fusion needs it."""
        # Chunks in id (content hash) order: the same texts give the same pseudo-queries, however the collection
        # was built up.
        order = sorted(range(len(self.ids)), key=self.ids.__getitem__)
        return reference_confidence([self.documents[i] for i in order], self.bm25_scores, self.cfg.candidate_k)

    def bm25_scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk (question words dropped from the query unless cfg says otherwise)."""
        text = lexical_query(query) if self.cfg.bm25_query_stopwords else query
        return self.bm25.scores(bm25_tokens(text, self.cfg.bm25_tokenizer))

    def embed_query(self, query: str) -> np.ndarray:
        if self._embedding is None:
            from medqwen.rag.store import make_embedding

            self._embedding = make_embedding(self.cfg, self.collection)  # the store's precision
        return np.asarray(self._embedding.embed_query([query])[0], dtype=np.float32)

    def dense(self, query_vector: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
        """Chroma's k nearest chunks (HNSW, cosine space) and their cosine similarities."""
        if not self.ids:
            return [], np.zeros(0)
        got = self.collection.query(query_embeddings=[query_vector], n_results=min(k, len(self.ids)),
                                    include=["distances"])
        return got["ids"][0], 1.0 - np.asarray(got["distances"][0])  # cosine distance = 1 - cosine

    def cosines(self, query_vector: np.ndarray, ids: list[str]) -> np.ndarray:
        """Cosine similarity of the query to the given chunks (their stored, normalised embeddings)."""
        if not ids:
            return np.zeros(0)
        got = self.collection.get(ids=ids, include=["embeddings"])
        by_id = dict(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32)))
        return np.array([float(by_id[i] @ query_vector) for i in ids])

    def search(self, query: str, k: int | None = None, method: str | None = None,
               dense_weight: float | None = None, bm25_weight: float | None = None,
               fusion: str | None = None) -> list[Hit]:
        """Top-k chunks for the query by cfg.retrieval (or `method`), reranked when cfg.reranker is set."""
        cfg = self.cfg
        k = k or cfg.top_k
        method, fusion = method or cfg.retrieval, fusion or cfg.fusion
        if method not in ("bm25", "dense", "hybrid"):
            raise ValueError(f"unknown retrieval method {method!r}: use dense, bm25 or hybrid")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}: use one of {FUSIONS}")
        depth = max(cfg.candidate_k, k, cfg.rerank_k if cfg.reranker else 0)
        weights = {"bm25": cfg.bm25_weight if bm25_weight is None else bm25_weight,
                   "dense": cfg.dense_weight if dense_weight is None else dense_weight}
        rankings: dict[str, list[str]] = {}
        if method in ("bm25", "hybrid"):
            bm25 = self.bm25_scores(query)
            rankings["bm25"] = [self.ids[i] for i in top_rows(bm25, depth)]
        if method in ("dense", "hybrid"):
            vector = self.embed_query(query)
            rankings["dense"], dense_cos = self.dense(vector, depth)

        if method == "hybrid" and fusion == "adaptive":
            fusion = adaptive_choice(bm25_confidence(bm25, cfg.candidate_k), self.bm25_reference,
                                     cfg.adaptive_threshold)
            if fusion == "zmax":
                weights = {"bm25": 0.5, "dense": 0.5}
        if method == "hybrid" and fusion in NORMALIZERS:
            candidates = list(dict.fromkeys(rankings["bm25"] + rankings["dense"]))
            cos = dict(zip(rankings["dense"], dense_cos))
            missing = [c for c in candidates if c not in cos]
            cos.update(zip(missing, self.cosines(vector, missing)))
            scores = fuse_scores(np.array([bm25[self.row[c]] for c in candidates]),
                                 np.array([cos[c] for c in candidates]),
                                 rankings["bm25"], rankings["dense"], candidates, fusion, weights["bm25"],
                                 weights["dense"], cfg.rrf_k)
            order = np.argsort(-scores, kind="stable")
            fused = [(candidates[i], float(scores[i])) for i in order]
        else:
            fused = weighted_rrf(rankings, weights, cfg.rrf_k)
        ranks = {m: {cid: r for r, cid in enumerate(ids, start=1)} for m, ids in rankings.items()}
        hits = [Hit(cid, self.documents[self.row[cid]], self.metadatas[self.row[cid]], score,
                    {m: ranks[m][cid] for m in ranks if cid in ranks[m]}, fusion if method == "hybrid" else "")
                for cid, score in fused if cid in self.row]
        if cfg.reranker:
            hits = self.rerank(query, hits[:cfg.rerank_k])
        return cap_per_source(hits, cfg.max_chunks_per_source)[:k]

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        """Reorder by a cross-encoder's relevance score (sentence-transformers CrossEncoder)."""
        if not hits:
            return hits
        if self._reranker is None:
            from sentence_transformers import CrossEncoder

            try:
                self._reranker = CrossEncoder(self.cfg.reranker, device=self.cfg.embedding_device)
            except OSError as err:
                raise OSError(f"cannot load reranker {self.cfg.reranker!r}: give a local folder or download it "
                              f"first ({err})") from None
        scores = self._reranker.predict([(query, h.document) for h in hits], show_progress_bar=False)
        for hit, score in zip(hits, scores):
            hit.score = float(score)
        return sorted(hits, key=lambda h: -h.score)


def cap_per_source(hits: list[Hit], limit: int) -> list[Hit]:
    """The hits in order, keeping at most `limit` chunks of each source (0: all): a section that matches in
    several overlapping chunks would otherwise fill the prompt with itself and push other sections out."""
    if limit <= 0:
        return hits
    taken: dict[str, int] = {}
    kept = []
    for hit in hits:
        taken[hit.source_id] = taken.get(hit.source_id, 0) + 1
        if taken[hit.source_id] <= limit:
            kept.append(hit)
    return kept


def recall_mrr(ranked_sources: list[str], gold: set[str], ks=(1, 5, 10), mrr_k: int = 10) -> dict[str, float]:
    """recall@k (1 if any gold source is in the top k) and reciprocal rank of the first gold hit within mrr_k."""
    first = next((i for i, s in enumerate(ranked_sources, start=1) if s in gold), math.inf)
    out = {f"recall@{k}": float(first <= k) for k in ks}
    out[f"mrr@{mrr_k}"] = 1.0 / first if first <= mrr_k else 0.0
    return out
