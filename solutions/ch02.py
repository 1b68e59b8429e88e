"""Worked solutions to the exercises of notebooks/02_metagradients_through_data.ipynb.

tests/test_solutions_ch02.py checks each one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mass_ref import (
    adapted_task_losses,
    distill_examples,
    example_attributions,
    query_loss_after_adapting,
)
from mass_ref.inner import PerExampleLoss


# Exercise 1 · Renormalised leave-one-out -------------------------------------------------------
#
# Dropping example i and renormalising moves the weights from w = 1/n to w' with w'_i = 0 and
# w'_j = 1/(n−1): the change of weights is δ_i = −1/n and δ_j = 1/(n(n−1)) for j ≠ i. To first
# order the loss changes by ⟨g, δ⟩ = −g_i/n + (S − g_i)/(n(n−1)) = (S − n g_i)/(n(n−1)), with
# S = Σ_j g_j. S is the same for every i, so the predicted *ranking* is still that of −g_i:
# renormalising shifts and rescales the prediction, it does not reorder it.


def renormalised_loo_prediction(attributions: Tensor) -> Tensor:
    """First-order prediction (S − n g_i) / (n(n−1)) of the renormalised leave-one-out change."""
    n = attributions.shape[0]
    return (attributions.sum() - n * attributions) / (n * (n - 1))


def renormalised_loo_changes(
    model: nn.Module, loss_fn: PerExampleLoss, support: Any, query: Any, *, inner_lr: float, num_steps: int = 1
) -> Tensor:
    """Actual change of the query loss when example i is dropped and the others reweighted to 1/(n−1)."""
    g = example_attributions(model, loss_fn, support, query, inner_lr=inner_lr, num_steps=num_steps)
    n = g.shape[0]
    uniform = torch.full((n,), 1.0 / n, dtype=g.dtype)
    renormalised = (1.0 - torch.eye(n, dtype=g.dtype)) / (n - 1)

    def loss_at(w: Tensor) -> Tensor:
        return query_loss_after_adapting(model, loss_fn, support, query, inner_lr=inner_lr, num_steps=num_steps,
                                         weights=w)

    with torch.no_grad():
        return torch.func.vmap(loss_at)(renormalised) - loss_at(uniform)


# Exercise 2 · Learn the weights (what MASS's scorer amortises) --------------------------------
#
# Exponentiated gradient keeps w on the simplex (w_i ≥ 0, Σ w_i = 1):
#     w_i ← w_i exp(−η g_i(w)) / Σ_j w_j exp(−η g_j(w)).
# Examples with harmful attributions (g_i > 0) lose weight at every step. The weights are fitted
# on a validation set; report the query loss on separate test points.


def learn_example_weights(
    model: nn.Module,
    loss_fn: PerExampleLoss,
    support: Any,
    validation: Any,
    *,
    inner_lr: float,
    num_steps: int = 1,
    iterations: int = 50,
    lr: float = 1.0,
) -> Tensor:
    """Weights on the simplex that lower the validation loss after adapting: ``[n]``."""
    w = None
    for _ in range(iterations):
        g = example_attributions(model, loss_fn, support, validation, inner_lr=inner_lr, num_steps=num_steps, weights=w)
        w = torch.full_like(g, 1.0 / g.shape[0]) if w is None else w
        w = w * torch.exp(-lr * g)
        w = w / w.sum()
    return w


# Exercise 3 · Distil the labels only -----------------------------------------------------------
#
# Keep x̃ at the m random real inputs and learn only ỹ. The labels still move θ' along
# Σ_j (f(x̃_j) − ỹ_j) ∇f(x̃_j): any combination of the m gradient directions ∇f(x̃_j) is reachable,
# but not others, so most (not all) of the gain remains.


def distillation_ratios(
    model: nn.Module,
    loss_fn: PerExampleLoss,
    init: tuple[Tensor, Tensor],
    target: tuple[Tensor, Tensor],
    query: tuple[Tensor, Tensor],
    *,
    inner_lr: float,
    iterations: int,
    lr: float = 0.05,
) -> dict[str, float]:
    """Mean query loss after adapting on distilled examples ÷ on the m random real points they started from."""
    random_real = adapted_task_losses(model, loss_fn, init, query, inner_lr=inner_lr).mean()
    ratios = {}
    for name, learn_inputs in (("inputs_and_labels", True), ("labels_only", False)):
        distilled = distill_examples(model, loss_fn, init, target, inner_lr=inner_lr, iterations=iterations, lr=lr,
                                     learn_inputs=learn_inputs, progress=False)
        learned = adapted_task_losses(model, loss_fn, distilled.batch, query, inner_lr=inner_lr).mean()
        ratios[name] = (learned / random_real).item()
    return ratios
