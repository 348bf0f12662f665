"""Small, exact statistics for accuracy comparisons: bootstrap confidence intervals and McNemar's test."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def bootstrap_ci(correct: Sequence[bool | int], n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (1-alpha) CI of the mean of 0/1 outcomes; (nan, nan) when empty."""
    return _percentile_ci(np.asarray(correct, dtype=np.float64), n_boot, alpha, seed)


def _percentile_ci(x: np.ndarray, n_boot: int, alpha: float, seed: int) -> tuple[float, float]:
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def mcnemar_exact(a_correct: Sequence[bool | int], b_correct: Sequence[bool | int]) -> dict[str, float | int]:
    """Paired McNemar test, exact binomial form: only discordant pairs count, two-sided p-value.

    b = items A got right and B wrong, c = the reverse; under H0 (same accuracy) b ~ Binomial(b + c, 1/2).
    """
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired test needs equal lengths, got {len(a_correct)} and {len(b_correct)}")
    a = np.asarray(a_correct, dtype=bool)
    b_ = np.asarray(b_correct, dtype=bool)
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    n = b + c
    if n == 0:
        return {"a_only": b, "b_only": c, "p_value": 1.0}
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return {"a_only": b, "b_only": c, "p_value": min(1.0, 2 * tail)}


def paired_bootstrap_diff_ci(a_correct: Sequence[bool | int], b_correct: Sequence[bool | int], n_boot: int = 1000,
                             alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (1-alpha) CI of mean(a) - mean(b) over the same items (resampled together)."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired CI needs equal lengths, got {len(a_correct)} and {len(b_correct)}")
    d = np.asarray(a_correct, dtype=np.float64) - np.asarray(b_correct, dtype=np.float64)
    return _percentile_ci(d, n_boot, alpha, seed)
