"""Solutions to the exercises of notebooks/05_mass_llm.ipynb (checked by tests/test_solutions_ch05.py)."""

from __future__ import annotations

from collections.abc import Sequence

from mass_ref.lm import PracticeSet


def weight_share_on_right(sets: Sequence[PracticeSet]) -> tuple[float, float]:
    """Exercise 3: (share of the scorer's total weight on right examples, plain share of right examples).

    Only examples whose truth is known count. A scorer that helps puts more than the plain share of
    its weight on right examples; an untrained one (all weights equal) gives the two the same value.
    """
    weight_right = weight_all = 0.0
    n_right = n_all = 0
    for s in sets:
        if s.weights is None:
            raise ValueError("every practice set needs scorer weights; build them with practice_sets(..., scorer=...).")
        for w, right in zip(s.weights, s.right):
            if right is None:
                continue
            weight_all += w
            n_all += 1
            if right:
                weight_right += w
                n_right += 1
    if n_all == 0:
        raise ValueError("no example with a known truth; nothing to measure.")
    return weight_right / weight_all, n_right / n_all
