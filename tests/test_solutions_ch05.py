"""The worked solution of chapter 5's scorer exercise measures what it claims."""

from __future__ import annotations

import pytest

from mass_ref.lm import PracticeSet
from solutions.ch05 import weight_share_on_right


def _set(weights, right):
    return PracticeSet(completions=[""] * len(right), examples=[("q", " a")] * len(right), weights=weights, right=right)


def test_uniform_weights_give_the_plain_share_and_a_good_scorer_more() -> None:
    right = [True, False, False, None]
    assert weight_share_on_right([_set([0.25] * 4, right)]) == pytest.approx((1 / 3, 1 / 3))
    share, plain = weight_share_on_right([_set([0.6, 0.1, 0.1, 0.2], right), _set([0.5, 0.5], [True, True])])
    assert plain == pytest.approx(3 / 5) and share == pytest.approx(1.6 / 1.8)


def test_missing_weights_or_truth_are_refused() -> None:
    with pytest.raises(ValueError, match="scorer weights"):
        weight_share_on_right([_set(None, [True])])
    with pytest.raises(ValueError, match="known truth"):
        weight_share_on_right([_set([1.0], [None])])
