"""Solutions to the exercises of notebooks/03_mass_toy.ipynb (checked by tests/test_solutions_ch03.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def one_step_attribution(
    theta: float, alpha: float, s: Sequence[float], xs: Sequence[float], ys: Sequence[float], x_star: float, y_star: float
) -> list[float]:
    """Exercise 1: g_i = ∂L/∂s_i for f_θ(x) = θx, one weighted SGD step, L = (θ' x* − y*)².

    θ' = θ − α Σ_i s_i 2 x_i (θ x_i − y_i), so g_i = 2 (θ' x* − y*) x* · (−2 α x_i (θ x_i − y_i)).
    """
    theta_prime = theta - alpha * sum(w * 2 * x * (theta * x - y) for w, x, y in zip(s, xs, ys))
    residual = 2 * (theta_prime * x_star - y_star) * x_star
    return [residual * (-2 * alpha * x * (theta * x - y)) for x, y in zip(xs, ys)]


def group_advantages_numpy(rewards: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Exercise 2: (r − mean) / (std + ε) within the last axis, NumPy only (population std)."""
    rewards = np.asarray(rewards, dtype=float)
    return (rewards - rewards.mean(-1, keepdims=True)) / (rewards.std(-1, keepdims=True) + eps)
