"""Prequential metrics: plain functions over lists, used by rtrec eval, benchmarks and tests.

    >>> mae([1, 2], [2, 2]), rmse([1, 3], [2, 2])
    (0.5, 1.0)
    >>> auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def mae(pred: Sequence[float], truth: Sequence[float]) -> float:
    return sum(abs(p - t) for p, t in zip(pred, truth, strict=True)) / len(pred)


def rmse(pred: Sequence[float], truth: Sequence[float]) -> float:
    return math.sqrt(sum((p - t) ** 2 for p, t in zip(pred, truth, strict=True)) / len(pred))


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half)."""
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: p[0])
    pos = sum(1 for _, y in pairs if y)
    neg = len(pairs) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j + 1) / 2  # ranks are 1-based
        rank_sum += avg_rank * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def log_loss(probs: Sequence[float], labels: Sequence[int], eps: float = 1e-7) -> float:
    total = 0.0
    for p, y in zip(probs, labels, strict=True):
        p = min(1 - eps, max(eps, p))
        total -= math.log(p) if y else math.log(1 - p)
    return total / len(probs)


def recall_at_k(recommended: Sequence[Sequence[str]], relevant: Sequence[str]) -> float:
    """Share of next interactions whose item was in the list recommended just before."""
    hits = sum(1 for items, item in zip(recommended, relevant, strict=True) if item in items)
    return hits / len(relevant) if relevant else float("nan")
