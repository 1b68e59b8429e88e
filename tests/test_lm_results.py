"""summarize_lm_methods and model_results: pooled intervals, paired gaps and honest results keys."""

from __future__ import annotations

import math

import pytest

from mass_ref import mean_ci95
from mass_ref.lm import EVAL_METHODS, model_results, summarize_lm_methods


def _run(correct: list[bool], loss: float, auc: float = float("nan")) -> dict:
    return {"correct": correct, "gold_loss": [loss + 0.01 * i for i in range(len(correct))], "sets": None, "auc": auc}


PER_SEED = {
    0: {"base": _run([True, False, False], 0.3), "tt_ss": _run([False, False, True], 0.4),
        "mass_no_update": _run([True, False, False], 0.25), "mass": _run([True, True, False], 0.2, auc=0.7)},
    1: {"base": _run([False, False, True], 0.3), "tt_ss": _run([False, True, False], 0.4),
        "mass_no_update": _run([True, False, True], 0.25), "mass": _run([True, False, True], 0.2, auc=float("nan"))},
}


def test_summary_pools_problems_of_all_seeds_and_pairs_the_gap_per_problem() -> None:
    table = summarize_lm_methods(PER_SEED)
    assert table["n_seeds"] == 2 and table["n_problems"] == 6
    assert (table["acc_mass"], table["acc_mass_ci95"]) == mean_ci95([1, 1, 0, 1, 0, 1])
    # paired per problem: mass − tt_ss = [1, 1, -1, 1, -1, 1]
    assert (table["acc_mass_minus_tt_ss"], table["acc_mass_minus_tt_ss_ci95"]) == mean_ci95([1, 1, -1, 1, -1, 1])
    assert "acc_tt_ss_minus_tt_ss" not in table
    # the gain through the practice data: MASS against its own trained weights without an update
    assert (table["acc_mass_minus_mass_no_update"], table["acc_mass_minus_mass_no_update_ci95"]) == mean_ci95(
        [0, 1, 0, 0, 0, 0])
    assert table["gold_loss_mass_minus_mass_no_update"] == pytest.approx(-0.05)
    assert table["gold_loss_mass_minus_mass_no_update_ci95"] == pytest.approx(0.0, abs=1e-12)
    assert "acc_mass_minus_mass_uniform" not in table  # a row that was not run is never paired
    assert table["scorer_auc_mass"] == 0.7 and table["scorer_auc_method"] == "mass"
    assert table["scorer_auc_wrong_vs_right"] == 0.7  # the NaN seed is dropped, not averaged in
    with pytest.raises(ValueError, match="per_seed is empty"):
        summarize_lm_methods({})


def test_model_results_prefixes_keys_and_never_invents_a_method() -> None:
    table = summarize_lm_methods(PER_SEED)
    table["acc_nan_example"] = float("nan")
    out = model_results("tiny", table, time_ratio=4.5, methods=["base", "tt_ss", "mass_no_update", "mass"])
    assert out["tiny_acc_mass"] == table["acc_mass"] and out["tiny_gold_loss_base_ci95"] == table["gold_loss_base_ci95"]
    assert out["tiny_meta_step_over_sft_step_time_ratio"] == 4.5
    assert out["tiny_n_problems"] == 6 and out["tiny_n_seeds"] == 2
    assert out["tiny_methods_not_run"].split(", ") == [m for m in EVAL_METHODS
                                                       if m not in ("base", "tt_ss", "mass_no_update", "mass")]
    assert out["tiny_acc_mass_minus_mass_no_update"] == table["acc_mass_minus_mass_no_update"]
    assert out["tiny_scorer_auc_mass"] == 0.7
    assert "tiny_acc_nan_example" not in out and "tiny_scorer_auc_method" not in out
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in out.values())
    assert model_results("m", table, time_ratio=1.0, methods=EVAL_METHODS)["m_methods_not_run"] == "none"
    with pytest.raises(ValueError, match="must be an identifier"):
        model_results("tiny lm", table, time_ratio=1.0, methods=[])
