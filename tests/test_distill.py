"""Synthetic examples learned through the inner loop: gradients, the vmap over tasks, and the learner."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mass_ref import (
    AdaptedModel,
    adapted_task_losses,
    distill_examples,
    inner_adapt,
    mse_per_example,
    sample_sine_tasks,
    sine_mlp,
)

DTYPE = torch.float64


def make_tasks(num_tasks: int = 3, m: int = 3, n_target: int = 12, seed: int = 0, dtype=DTYPE):
    """A tanh 1-16-1 regressor and sine tasks: m starting points, n_target real target points, 20 query points."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(1, 16, dtype=dtype), nn.Tanh(), nn.Linear(16, 1, dtype=dtype))
    tasks = sample_sine_tasks(num_tasks, m + n_target, 20, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    init = (tasks.x_support[:, :m], tasks.y_support[:, :m])
    target = (tasks.x_support[:, m:], tasks.y_support[:, m:])
    return model, init, target, (tasks.x_query, tasks.y_query)


def test_task_losses_equal_a_loop_over_tasks() -> None:
    model, init, target, _ = make_tasks()
    batched = adapted_task_losses(model, mse_per_example, init, target, inner_lr=0.1, num_steps=2)
    for t in range(init[0].shape[0]):
        adapted = inner_adapt(model, mse_per_example, (init[0][t], init[1][t]), inner_lr=0.1, num_steps=2)
        assert abs(batched[t].item() - mse_per_example(adapted, (target[0][t], target[1][t])).mean().item()) <= 1e-12


def test_label_gradient_by_hand() -> None:
    """One step on MSE: ∂L_T/∂ỹ_j = (2α/m) ⟨∇L_T(θ'), ∇_θ f_θ(x̃_j)⟩."""
    model, (x, y), target, _ = make_tasks(num_tasks=1)
    alpha, m = 0.1, x.shape[1]
    y = y.clone().requires_grad_()
    losses = adapted_task_losses(model, mse_per_example, (x, y), target, inner_lr=alpha)
    (grad_y,) = torch.autograd.grad(losses.sum(), [y])

    adapted = inner_adapt(model, mse_per_example, (x[0], y[0].detach()), inner_lr=alpha, first_order=True)
    theta_prime = {k: v.detach().requires_grad_() for k, v in adapted.params.items()}
    grad_t = torch.autograd.grad(mse_per_example(AdaptedModel(model, theta_prime), (target[0][0], target[1][0])).mean(),
                                 list(theta_prime.values()))
    for j in range(m):
        grad_f = torch.autograd.grad(model(x[0][j : j + 1]).sum(), list(model.parameters()))
        expected = 2 * alpha / m * sum((a * b).sum() for a, b in zip(grad_t, grad_f))
        assert abs(grad_y[0, j, 0].item() - expected.item()) <= 1e-12


def test_input_gradient_matches_finite_differences() -> None:
    model, (x, y), target, _ = make_tasks(num_tasks=2)
    kw = dict(inner_lr=0.1, num_steps=2)
    x = x.clone().requires_grad_()
    (grad_x,) = torch.autograd.grad(adapted_task_losses(model, mse_per_example, (x, y), target, **kw).sum(), [x])
    eps = 1e-6
    for t, j in [(0, 0), (0, 2), (1, 1)]:
        e = torch.zeros_like(x)
        e[t, j, 0] = eps
        with torch.no_grad():
            plus = adapted_task_losses(model, mse_per_example, (x + e, y), target, **kw)[t]
            minus = adapted_task_losses(model, mse_per_example, (x - e, y), target, **kw)[t]
        fd = ((plus - minus) / (2 * eps)).item()
        assert abs(grad_x[t, j, 0].item() - fd) / max(abs(fd), 1e-12) <= 1e-6


def test_distilled_examples_beat_the_real_points_they_started_from() -> None:
    model, init, target, query = make_tasks(num_tasks=4, m=3, n_target=30, seed=1)
    before = [p.detach().clone() for p in model.parameters()]
    kw = dict(inner_lr=0.1, num_steps=1)
    distilled = distill_examples(model, mse_per_example, init, target, iterations=60, lr=0.05, progress=False, **kw)
    assert distilled.inputs.shape == init[0].shape and distilled.targets.shape == init[1].shape
    assert len(distilled.history) == 60 and distilled.history[-1] < 0.75 * distilled.history[0]
    assert len(distilled.best_history) == 60 and distilled.best_history[0] == distilled.history[0]
    assert all(b <= a for a, b in zip(distilled.best_history, distilled.best_history[1:]))  # best so far: monotone
    assert distilled.best_history[-1] <= min(distilled.history) + 1e-12
    fit = {name: adapted_task_losses(model, mse_per_example, batch, target, **kw)
           for name, batch in (("random", init), ("learned", distilled.batch))}
    assert (fit["learned"] < fit["random"]).all()  # on the target points they were learned for, every task
    assert abs(distilled.best_history[-1] - fit["learned"].mean().item()) <= 1e-12  # the returned examples' loss
    held_out = {name: adapted_task_losses(model, mse_per_example, batch, query, **kw).mean()
                for name, batch in (("random", init), ("learned", distilled.batch))}
    assert held_out["learned"] < 0.8 * held_out["random"]  # and on held-out query points, on average
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # θ is not trained...
    assert all(p.grad is None for p in model.parameters())  # ...and gets no gradient


def test_labels_only_keeps_the_inputs() -> None:
    model, init, target, _ = make_tasks(num_tasks=2, seed=2)
    distilled = distill_examples(model, mse_per_example, init, target, inner_lr=0.1, iterations=5, learn_inputs=False,
                                 progress=False)
    assert torch.equal(distilled.inputs, init[0]) and not torch.equal(distilled.targets, init[1])


def test_float32_sine_mlp_runs() -> None:
    model = sine_mlp()
    _, init, target, _ = make_tasks(num_tasks=2, dtype=torch.float32)
    distilled = distill_examples(model, mse_per_example, init, target, inner_lr=0.01, iterations=3, progress=False)
    assert distilled.targets.dtype == torch.float32 and torch.isfinite(torch.tensor(distilled.history)).all()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda i, t: dict(init=(i[0][:, :, 0], i[1])), "init"),
        (lambda i, t: dict(init=i[0]), "init"),
        (lambda i, t: dict(target=(t[0][:1], t[1][:1])), "target"),
        (lambda i, t: dict(target=(t[0], t[1][:, :3])), "target"),
        (lambda i, t: dict(iterations=0), "iterations"),
        (lambda i, t: dict(iterations=2.5), "iterations"),
        (lambda i, t: dict(lr=0.0), "lr"),
        (lambda i, t: dict(inner_lr=-1.0), "inner_lr"),
    ],
)
def test_bad_arguments_name_the_argument(change, named: str) -> None:
    model, init, target, _ = make_tasks()
    kwargs = dict(init=init, target=target, inner_lr=0.1, iterations=2, progress=False)
    kwargs.update(change(init, target))
    with pytest.raises(ValueError, match=named):
        distill_examples(model, mse_per_example, **kwargs)


def test_task_losses_bad_arguments() -> None:
    model, init, target, _ = make_tasks()
    with pytest.raises(ValueError, match="support and query"):
        adapted_task_losses(model, mse_per_example, init, (target[0][:2], target[1][:2]), inner_lr=0.1)
    with pytest.raises(ValueError, match="query"):
        adapted_task_losses(model, mse_per_example, init, target[0], inner_lr=0.1)
