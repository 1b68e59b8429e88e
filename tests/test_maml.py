"""MAML on sine: the hand-derived meta-gradient, both meta-gradient methods, training, evaluation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mass_ref import (
    adaptation_curve,
    inner_adapt,
    maml_loss,
    meta_train_maml,
    mse_per_example,
    oracle_inputs,
    pretrain_on_all_tasks,
    sample_sine_tasks,
    seed_everything,
    sine_mlp,
    tune_inner_lr,
)


@pytest.mark.parametrize("backend", ["higher", "torch.func"])
def test_one_parameter_meta_gradient_by_hand(backend: str) -> None:
    """f_θ(x) = θx; one inner step on (x_s, y_s); query loss on (x_q, y_q). Derived in notebook 01."""
    theta, alpha, x_s, y_s, x_q, y_q = 0.5, 0.1, 1.0, 2.0, 2.0, 3.0
    model = nn.Linear(1, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(theta)
    lr = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    support = (torch.tensor([[x_s]], dtype=torch.float64), torch.tensor([[y_s]], dtype=torch.float64))
    query = (torch.tensor([[x_q]], dtype=torch.float64), torch.tensor([[y_q]], dtype=torch.float64))
    adapted = inner_adapt(model, mse_per_example, support, inner_lr=lr, backend=backend)
    d_theta, d_alpha = torch.autograd.grad(mse_per_example(adapted, query).mean(), [model.weight, lr])
    theta_prime = theta - alpha * 2 * x_s * (theta * x_s - y_s)
    assert theta_prime == pytest.approx(0.8)
    assert d_theta.item() == pytest.approx(2 * (theta_prime * x_q - y_q) * x_q * (1 - 2 * alpha * x_s**2))  # -4.48
    assert d_alpha.item() == pytest.approx(2 * (theta_prime * x_q - y_q) * x_q * (-2 * x_s * (theta * x_s - y_s)))


def test_vmap_and_higher_loop_give_the_same_meta_gradient() -> None:
    model = sine_mlp(dtype=torch.float64)
    tasks = sample_sine_tasks(6, 5, 7, generator=seed_everything(0), dtype=torch.float64)
    for first_order in (False, True):
        grads = {}
        for method in ("vmap", "higher_loop"):
            loss = maml_loss(model, tasks, inner_lr=0.05, num_inner_steps=2, first_order=first_order, method=method)
            grads[method] = torch.autograd.grad(loss, list(model.parameters()))
        for a, b in zip(grads["vmap"], grads["higher_loop"]):
            assert (a - b).abs().max().item() <= 1e-10
    with pytest.raises(ValueError, match="method"):
        maml_loss(model, tasks, inner_lr=0.05, method="jit")


def test_meta_training_is_deterministic_and_learns() -> None:
    histories = []
    for _ in range(2):
        torch.manual_seed(0)
        model = sine_mlp()
        histories.append(meta_train_maml(model, iterations=150, meta_batch_size=5, k_shot=10, inner_lr=0.01,
                                         outer_lr=3e-3, generator=seed_everything(0), progress=False))
    assert histories[0] == histories[1]
    assert sum(histories[0][-30:]) / 30 < sum(histories[0][:30]) / 30


def test_pretrained_and_oracle_baselines_fit() -> None:
    torch.manual_seed(0)
    oracle = sine_mlp(in_features=3)
    history = pretrain_on_all_tasks(oracle, iterations=300, tasks_per_batch=10, k_shot=10, lr=3e-3,
                                    generator=seed_everything(0), oracle=True, progress=False)
    assert sum(history[-30:]) / 30 < 0.5 * sum(history[:30]) / 30
    tasks = sample_sine_tasks(3, 2, 4, generator=seed_everything(1))
    assert oracle_inputs(tasks.x_query, tasks.amplitude, tasks.phase).shape == (3, 4, 3)


def test_adaptation_curve_matches_explicit_adaptation() -> None:
    torch.manual_seed(0)
    model = sine_mlp(dtype=torch.float64)
    tasks = sample_sine_tasks(3, 5, 8, generator=seed_everything(2), dtype=torch.float64)
    curve = adaptation_curve(model, tasks, inner_lr=0.02, max_steps=3)
    assert curve.shape == (3, 4)
    for t in range(3):
        support, query = (tasks.x_support[t], tasks.y_support[t]), (tasks.x_query[t], tasks.y_query[t])
        assert curve[t, 0].item() == pytest.approx(mse_per_example(model, query).mean().item())
        adapted = inner_adapt(model, mse_per_example, support, inner_lr=0.02, num_steps=3)
        assert curve[t, 3].item() == pytest.approx(mse_per_example(adapted, query).mean().item(), rel=1e-10)
    best, scores = tune_inner_lr(model, tasks, [1e3, 1e-4, 0.02], max_steps=3)  # 1e3 diverges to inf/nan
    assert scores[1e3] == float("inf")
    assert best == min(scores, key=scores.get) and best != 1e3
