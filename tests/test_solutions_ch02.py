"""The worked solutions to chapter 2's exercises (solutions/ch02.py) do what the exercises ask."""

from __future__ import annotations

from problems import tanh_regression_problem

import torch
from torch import Tensor, nn

from mass_ref import (
    example_attributions,
    inner_adapt,
    mse_per_example,
    query_loss_after_adapting,
    sample_sine_tasks,
    spearman,
)
from solutions.ch02 import (
    distillation_ratios,
    learn_example_weights,
    renormalised_loo_changes,
    renormalised_loo_prediction,
)

DTYPE = torch.float64


Batch = tuple[Tensor, Tensor]


def make_problem(seed: int, n: int, scale: float = 0.7) -> tuple[nn.Module, Batch, Batch]:
    return tanh_regression_problem(seed, n, scale=scale, n_query=20)


def test_exercise_1_renormalised_leave_one_out() -> None:
    model, support, query = make_problem(seed=0, n=30)
    kw = dict(inner_lr=0.05, num_steps=2)
    g = example_attributions(model, mse_per_example, support, query, **kw)
    n = g.shape[0]
    prediction = renormalised_loo_prediction(g)
    # the formula is the directional derivative ⟨g, w' − w⟩
    i = 4
    delta = torch.full((n,), 1.0 / (n * (n - 1)), dtype=DTYPE)
    delta[i] = -1.0 / n
    assert abs(prediction[i].item() - (g @ delta).item()) <= 1e-12
    # the actual change: re-adapt on the other n − 1 points with the plain mean loss
    changes = renormalised_loo_changes(model, mse_per_example, support, query, **kw)
    keep = [j for j in range(n) if j != i]
    without = inner_adapt(model, mse_per_example, (support[0][keep], support[1][keep]), **kw)
    full = query_loss_after_adapting(model, mse_per_example, support, query, **kw)
    assert abs(changes[i].item() - (mse_per_example(without, query).mean() - full).item()) <= 1e-12
    assert spearman(prediction, changes) >= 0.95
    assert spearman(prediction, -g) == 1.0  # same ranking as −g_i


def test_exercise_2_learned_weights_shun_the_corrupted_example() -> None:
    model, (xs, ys), validation = make_problem(seed=1, n=10)
    fitted = inner_adapt(model, mse_per_example, (xs, ys), inner_lr=0.2, num_steps=50, first_order=True).params
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(fitted[name])  # start from a learner that fits the task, so that a wrong label hurts
    bad = ys.clone()
    bad[7] -= 2.0
    kw = dict(inner_lr=0.1, num_steps=2)
    w = learn_example_weights(model, mse_per_example, (xs, bad), validation, iterations=30, lr=0.5, **kw)
    assert w.shape == (10,) and (w >= 0).all() and abs(w.sum().item() - 1) <= 1e-12
    assert w.argmin().item() == 7 and w[7] < 0.5 / 10
    uniform = query_loss_after_adapting(model, mse_per_example, (xs, bad), validation, **kw)
    learned = query_loss_after_adapting(model, mse_per_example, (xs, bad), validation, weights=w, **kw)
    assert learned < 0.9 * uniform


def test_exercise_3_labels_only_distillation_keeps_most_of_the_gain() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16, dtype=DTYPE), nn.Tanh(), nn.Linear(16, 1, dtype=DTYPE))
    tasks = sample_sine_tasks(4, 3 + 30, 20, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    init = (tasks.x_support[:, :3], tasks.y_support[:, :3])
    target = (tasks.x_support[:, 3:], tasks.y_support[:, 3:])
    ratios = distillation_ratios(model, mse_per_example, init, target, (tasks.x_query, tasks.y_query),
                                 inner_lr=0.1, iterations=60)
    assert set(ratios) == {"inputs_and_labels", "labels_only"}
    assert ratios["inputs_and_labels"] < 0.8 and ratios["labels_only"] < 0.9
