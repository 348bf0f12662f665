"""Text metrics of the open-ended evaluation: ROUGE-L and BLEU with Chinese at character level (other scripts as
sacrebleu's 13a words), the identity check, and 95% bootstrap intervals over questions."""

from __future__ import annotations

from typing import Sequence

from medqwen.stats import bootstrap_ci  # written for 0/1 outcomes; the mean of any values works the same


def zh_tokens(text: str) -> list[str]:
    """sacrebleu's `zh` tokenization: every CJK character is a token; Latin words and digits stay words."""
    from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

    return TokenizerZh()(text.strip()).split()


class _ZhTokenizer:
    """rouge-score's default tokenizer deletes every non-ASCII character, i.e. all Chinese; this keeps them."""

    def tokenize(self, text: str) -> list[str]:
        return zh_tokens(text)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (0-1) on zh tokens."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_ZhTokenizer())
    return scorer.score(reference, prediction)["rougeL"].fmeasure


def sentence_bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU (0-100, sacrebleu defaults: exp smoothing) on zh tokens."""
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [reference], tokenize="zh").score


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) on zh tokens: n-gram counts pooled over all answers, the usual headline number."""
    import sacrebleu

    return sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize="zh").score


def names_assistant(reply: str, name: str) -> bool:
    """True when the reply contains the assistant's name (case and spaces ignored)."""
    squash = lambda s: "".join(s.split()).lower()  # noqa: E731
    return bool(name) and squash(name) in squash(reply)


def ratio_ci(numerators: Sequence[float], denominators: Sequence[float], n_boot: int = 1000,
             seed: int = 0) -> tuple[float, float] | None:
    """95% percentile bootstrap interval of sum(num)/sum(den) over items (e.g. loss per token over answers)."""
    import numpy as np

    num, den = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    if num.size < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, num.size, size=(n_boot, num.size))
    ratios = num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), 1)
    low, high = np.quantile(ratios, [0.025, 0.975])
    return float(low), float(high)


def mean_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float] | None:
    """95% percentile bootstrap interval of a mean over items (None for fewer than 2 items)."""
    return bootstrap_ci(values, seed=seed) if len(values) >= 2 else None
