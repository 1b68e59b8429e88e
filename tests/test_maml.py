"""MAML on sine: the hand-derived meta-gradient, both meta-gradient methods, training, evaluation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mass_ref import (
    LearningCurve,
    adam_train,
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
from mass_ref.training import scheduled_lr


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


def test_cosine_schedule_decays_from_the_peak_to_zero() -> None:
    assert scheduled_lr(1e-3, 0, 100) == scheduled_lr(1e-3, 99, 100) == 1e-3  # constant
    assert scheduled_lr(1e-3, 0, 100, "cosine") == pytest.approx(1e-3)
    assert scheduled_lr(1e-3, 50, 100, "cosine") == pytest.approx(5e-4)
    assert scheduled_lr(1e-3, 100, 100, "cosine") == pytest.approx(0.0, abs=1e-15)
    rates = [scheduled_lr(1e-3, t, 100, "cosine") for t in range(100)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    with pytest.raises(ValueError, match="lr_schedule"):
        scheduled_lr(1e-3, 0, 100, "linear")


def test_adam_train_applies_the_schedule_and_reports_every_step() -> None:
    model = nn.Linear(1, 1)
    steps: list[int] = []
    optimizer_lrs: list[float] = []

    def step_loss() -> torch.Tensor:
        return model.weight.pow(2).sum()

    original = torch.optim.Adam.step

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        optimizer_lrs.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    torch.optim.Adam.step = spy
    try:
        adam_train(model, step_loss, iterations=4, lr=0.1, desc="t", progress=False, lr_schedule="cosine",
                   on_step=steps.append)
    finally:
        torch.optim.Adam.step = original
    assert optimizer_lrs == pytest.approx([scheduled_lr(0.1, t, 4, "cosine") for t in range(4)])
    assert steps == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="lr_schedule"):
        adam_train(model, step_loss, iterations=1, lr=0.1, desc="t", progress=False, lr_schedule="step")


def test_learning_curve_records_held_out_mse_during_meta_training() -> None:
    tasks = sample_sine_tasks(8, 10, 20, generator=seed_everything(3))
    curve = LearningCurve(tasks, inner_lr=0.01, every=40)
    torch.manual_seed(0)
    model = sine_mlp()
    history = meta_train_maml(model, iterations=100, meta_batch_size=5, k_shot=10, inner_lr=0.01, outer_lr=3e-3,
                              generator=seed_everything(0), progress=False, lr_schedule="cosine", learning_curve=curve)
    assert len(history) == 100
    assert curve.iterations == [0, 40, 80, 100]  # step 0, every 40, and the last
    final = adaptation_curve(model, tasks, inner_lr=0.01, max_steps=1)[:, 1]
    assert torch.equal(curve.per_task[-1], final)
    (it, mean, half), = curve.summary()[-1:]
    assert it == 100 and mean == pytest.approx(final.mean().item()) and half > 0
    # recording does not change training: the same seed without a curve gives the same losses
    torch.manual_seed(0)
    again = meta_train_maml(sine_mlp(), iterations=100, meta_batch_size=5, k_shot=10, inner_lr=0.01, outer_lr=3e-3,
                            generator=seed_everything(0), progress=False, lr_schedule="cosine")
    assert again == history
    with pytest.raises(ValueError, match="every"):
        LearningCurve(tasks, inner_lr=0.01, every=0)
