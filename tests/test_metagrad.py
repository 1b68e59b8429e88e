"""weight_meta_gradient: the exact modes agree with each other and with finite differences; the approximations
are what they claim (first-order exact at K = 1, truncated = exact when it keeps every step)."""

from __future__ import annotations

import pytest
import torch

from mass_ref import mse_per_example
from mass_ref.metagrad import weight_meta_gradient
from tests.problems import DTYPE, tanh_regression_problem

EXACT = ("unroll", "checkpointed", "forward_over_reverse")


def _setup(seed: int = 0):
    model, support, query = tanh_regression_problem(seed, n=5, scale=0.8)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    weights = torch.linspace(0.1, 0.3, 5, dtype=DTYPE)
    outer = lambda forward: mse_per_example(forward, query).mean()  # noqa: E731
    return model, support, outer, params, weights


def _meta(mode: str, num_steps: int, seed: int = 0, **kwargs):
    model, support, outer, params, weights = _setup(seed)
    return weight_meta_gradient(model, mse_per_example, support, outer, weights=weights, inner_lr=0.3,
                                num_steps=num_steps, params=params, mode=mode, **kwargs)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("num_steps", [1, 2, 4])
@pytest.mark.parametrize("mode", ["checkpointed", "forward_over_reverse"])
def test_memory_saving_exact_modes_equal_the_full_unroll(mode: str, num_steps: int) -> None:
    ref, got = _meta("unroll", num_steps), _meta(mode, num_steps)
    assert torch.allclose(got.outer_loss, ref.outer_loss, rtol=1e-12, atol=0)
    assert _rel(got.weights, ref.weights) <= 1e-6
    for name in ref.params:
        assert _rel(got.params[name], ref.params[name]) <= 1e-6, name


@pytest.mark.parametrize("mode", EXACT)
def test_exact_modes_match_finite_differences(mode: str) -> None:
    model, support, outer, params, weights = _setup(1)
    exact = _meta(mode, 3, seed=1).weights

    def loss_at(w: torch.Tensor) -> torch.Tensor:
        return weight_meta_gradient(model, mse_per_example, support, outer, weights=w, inner_lr=0.3, num_steps=3,
                                    params=params, mode="first_order").outer_loss  # the loss only: any mode

    eps = 1e-6
    fd = torch.stack([(loss_at(weights + eps * e) - loss_at(weights - eps * e)) / (2 * eps)
                      for e in torch.eye(len(weights), dtype=DTYPE)])
    assert _rel(exact, fd) <= 1e-6


def test_first_order_is_exact_for_one_step_and_only_close_for_more() -> None:
    assert _rel(_meta("first_order", 1).weights, _meta("unroll", 1).weights) <= 1e-10
    approx, exact = _meta("first_order", 4).weights, _meta("unroll", 4).weights
    cos = torch.nn.functional.cosine_similarity(approx, exact, dim=0).item()
    assert _rel(approx, exact) > 1e-3 and cos > 0  # an approximation, pointing the same way here


def test_truncated_through_every_step_is_exact_and_through_fewer_is_not() -> None:
    exact = _meta("unroll", 3).weights
    assert _rel(_meta("truncated", 3, truncate=3).weights, exact) <= 1e-6
    assert _rel(_meta("truncated", 3, truncate=1).weights, exact) > 1e-3


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(mode="adjoint"), "mode must be one of"),
    (dict(mode="truncated"), "needs truncate in 1..num_steps=2"),
    (dict(mode="truncated", truncate=3), "needs truncate in 1..num_steps=2"),
    (dict(mode="unroll", truncate=1), "only applies to mode='truncated'"),
    (dict(num_steps=0), "num_steps must be an integer >= 1"),
    (dict(inner_lr=-1.0), "inner_lr must be a positive float"),
    (dict(weights=torch.ones(5, 1, dtype=DTYPE)), r"weights must have shape \[n\]"),
    (dict(params={}), "params is empty"),
])
def test_bad_arguments_fail_before_any_work(kwargs: dict, message: str) -> None:
    model, support, outer, params, weights = _setup()
    call = dict(weights=weights, inner_lr=0.3, num_steps=2, params=params, mode="unroll") | kwargs
    with pytest.raises(ValueError, match=message):
        weight_meta_gradient(model, mse_per_example, support, outer, **call)


def test_first_order_equals_its_formula_from_per_example_gradients() -> None:
    """∂L/∂w_i ≈ −α Σ_k ∇ℓ_i(φ_k)·∇L_out(φ_K): per-example gradients by plain autograd, one example at a time."""
    from torch.func import functional_call

    model, support, outer, params, weights = _setup(2)
    alpha, steps = 0.3, 3
    trajectory = [params]
    for _ in range(steps):
        p = {n: t.detach().requires_grad_() for n, t in trajectory[-1].items()}
        loss = (weights * mse_per_example(lambda x: functional_call(model, p, (x,)), support)).sum()
        trajectory.append({n: t - alpha * g for (n, t), g in zip(p.items(), torch.autograd.grad(loss, list(p.values())))})
    last = {n: t.detach().requires_grad_() for n, t in trajectory[-1].items()}
    v = torch.autograd.grad(outer(lambda x: functional_call(model, last, (x,))), list(last.values()))
    expected = torch.zeros_like(weights)
    for phi in trajectory[:-1]:
        p = {n: t.detach().requires_grad_() for n, t in phi.items()}
        for i in range(len(weights)):
            x, y = support
            loss_i = mse_per_example(lambda x_: functional_call(model, p, (x_,)), (x[i:i + 1], y[i:i + 1])).sum()
            g_i = torch.autograd.grad(loss_i, list(p.values()))
            expected[i] -= alpha * sum((a * b).sum() for a, b in zip(g_i, v))
    got = weight_meta_gradient(model, mse_per_example, support, outer, weights=weights, inner_lr=alpha,
                               num_steps=steps, params=params, mode="first_order").weights
    assert _rel(got, expected) <= 1e-10


@pytest.mark.parametrize("mode", ["unroll", "checkpointed", "forward_over_reverse", "first_order", "truncated"])
def test_attributions_alone_equal_those_computed_with_the_parameter_gradient(mode: str) -> None:
    extra = {"truncate": 2} if mode == "truncated" else {}
    full, alone = _meta(mode, 3, **extra), _meta(mode, 3, with_params=False, **extra)
    assert alone.params == {} and _rel(alone.weights, full.weights) <= 1e-12
    assert torch.equal(alone.outer_loss, full.outer_loss)
