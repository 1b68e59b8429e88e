"""Results tables of the LM experiment: rows pooled over seeds, paired differences, results-file keys.

:func:`summarize_lm_methods` turns :func:`~mass_ref.lm.experiment.evaluate_lm_methods`' per-problem
answers into means with 95% intervals, and the paired differences that say where a gain comes
from (:data:`~mass_ref.lm.experiment.PAIRED_DIFFERENCES`); :func:`model_results` prefixes one
model's table for a notebook's results file; :func:`run_environment` says on what and in which
precision the numbers were computed (``eval.json`` records it).

Introduced in notebooks/05_mass_llm.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mass_ref.lm.amp import resolve_precision
from mass_ref.lm.experiment import EVAL_METHODS, PAIRED_DIFFERENCES
from mass_ref.results import mean_ci95

__all__ = ["model_results", "run_environment", "summarize_lm_methods"]


def _paired(per_seed: dict[int, dict[str, dict[str, Any]]], seeds: list[int], a: str, b: str,
            key: str) -> tuple[float, float]:
    diff = [float(x) - float(y) for s in seeds for x, y in zip(per_seed[s][a][key], per_seed[s][b][key])]
    return mean_ci95(diff)


def summarize_lm_methods(per_seed: dict[int, dict[str, dict[str, Any]]]) -> dict[str, float]:
    """Pool :func:`evaluate_lm_methods` results over seeds into a flat, JSON-ready table.

    Keys per row M: ``acc_M`` and ``gold_loss_M`` with ``_ci95`` twins (95% t-interval over all
    problems of all seeds); for each pair (a, b) of :data:`PAIRED_DIFFERENCES` that was run,
    ``acc_a_minus_b`` and ``gold_loss_a_minus_b`` with ``_ci95`` (paired per problem); per scored row
    ``scorer_auc_M`` (mean over seeds), and ``scorer_auc_wrong_vs_right`` (MASS's, else MASS_gold's)
    with ``scorer_auc_method``; ``n_problems`` and ``n_seeds``.
    """
    if not per_seed:
        raise ValueError("per_seed is empty; evaluate at least one seed.")
    seeds = sorted(per_seed)
    methods = list(per_seed[seeds[0]])
    summary: dict[str, float] = {"n_seeds": len(seeds),
                                 "n_problems": sum(len(per_seed[s][methods[0]]["correct"]) for s in seeds)}
    for method in methods:
        correct = [float(c) for s in seeds for c in per_seed[s][method]["correct"]]
        summary[f"acc_{method}"], summary[f"acc_{method}_ci95"] = mean_ci95(correct)
        losses = [x for s in seeds for x in per_seed[s][method]["gold_loss"]]
        summary[f"gold_loss_{method}"], summary[f"gold_loss_{method}_ci95"] = mean_ci95(losses)
    for a, b in PAIRED_DIFFERENCES:
        if a in methods and b in methods:
            for metric, key in (("acc", "correct"), ("gold_loss", "gold_loss")):
                summary[f"{metric}_{a}_minus_{b}"], summary[f"{metric}_{a}_minus_{b}_ci95"] = _paired(
                    per_seed, seeds, a, b, key)
    for method in methods:
        aucs = [a for s in seeds if (a := per_seed[s][method]["auc"]) == a]  # drop NaN (one class empty)
        if aucs:
            summary[f"scorer_auc_{method}"] = sum(aucs) / len(aucs)
    for method in ("mass", "mass_gold"):
        if f"scorer_auc_{method}" in summary:
            summary["scorer_auc_wrong_vs_right"] = summary[f"scorer_auc_{method}"]
            summary["scorer_auc_method"] = method  # type: ignore[assignment]
            break
    return summary


def model_results(name: str, table: dict[str, float], *, time_ratio: float, methods: Sequence[str]) -> dict[str, Any]:
    """Prefix one model's :func:`summarize_lm_methods` table for a results file: ``<name>_<key>``.

    Keeps ``acc_*``, ``gold_loss_*`` and ``scorer_auc_*`` (NaN entries are dropped: no
    number is better than a made-up one), adds ``<name>_meta_step_over_sft_step_time_ratio`` =
    ``time_ratio`` and ``<name>_methods_not_run``: the methods of :data:`EVAL_METHODS` absent from
    ``methods``, comma-separated, or ``"none"``. A method that was not run gets no accuracy key.
    """
    if not name.isidentifier():
        raise ValueError(f"model name {name!r} must be an identifier (it prefixes results keys), e.g. 'tiny'.")
    out: dict[str, Any] = {f"{name}_n_problems": table["n_problems"], f"{name}_n_seeds": table["n_seeds"],
                           f"{name}_meta_step_over_sft_step_time_ratio": time_ratio}
    for key, value in table.items():
        keep = key.startswith(("acc_", "gold_loss_", "scorer_auc_")) and key != "scorer_auc_method"
        if keep and isinstance(value, float) and value == value:
            out[f"{name}_{key}"] = value
    out[f"{name}_methods_not_run"] = ", ".join(m for m in EVAL_METHODS if m not in methods) or "none"
    return out


def run_environment(precision: str, device: torch.device | str) -> dict[str, str]:
    """Where a run computed: ``{"precision": "bf16" | "fp32", "device": "cuda:0" | "cpu", "device_name": ...}``.

    ``precision`` is ``LMMassConfig.precision`` resolved on ``device`` (:func:`~mass_ref.lm.amp.resolve_precision`:
    "auto" is bf16 on a card with native bf16, else fp32): the precision of the meta-training steps on this
    device (the evaluation's test-time updates and decoding run in the weights' dtype, without autocast);
    ``device_name`` is the CUDA card's name, or "cpu".
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"precision": resolve_precision(precision, device), "device": str(device), "device_name": name}
