"""Rank statistics used to judge attributions and scorers: Spearman's ρ and the ROC AUC.

Both take tensors or arrays of shape ``[n]`` and return a float.

Introduced in notebooks/02_metagradients_through_data.ipynb.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from torch import Tensor

__all__ = ["roc_auc", "spearman"]


def spearman(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Spearman rank correlation of two equally long vectors (ties get average ranks)."""
    x, y = _as_vector(a, "a"), _as_vector(b, "b")
    if x.shape != y.shape or x.size < 3:
        raise ValueError(f"a and b must be vectors of the same length >= 3; got {x.size} and {y.size}.")
    return float(stats.spearmanr(x, y).statistic)


def roc_auc(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for detecting ``labels == 1``.

    Computed as the Mann-Whitney statistic, P(score of a positive > score of a negative), with
    ties counted 1/2: (sum of the positives' ranks − n₊(n₊+1)/2) / (n₊ n₋).
    """
    s, y = _as_vector(scores, "scores"), _as_vector(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same length; got {s.size} and {y.size}.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (negative) or 1 (positive).")
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"labels must contain both classes; got {positives} positives and {negatives} negatives.")
    ranks = stats.rankdata(s)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _as_vector(values: Tensor | np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a vector (1-D); got shape {x.shape}.")
    return x
