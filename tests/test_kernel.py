"""The one inner-loop kernel (`sgd_trajectory`) and the one attribution vocabulary (`weight_meta_gradient`).

Every K-step update calls the kernel; every attribution is pinned here to `weight_meta_gradient`: the first-order
one is it (to 1e-16), the exact ones (chapter 2's definition, the toy's batched one) equal its unroll, and the
higher backend (an independent implementation) equals the kernel.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mass_ref import (alignment_attributions, example_attributions, inner_adapt, inner_loss_of, mse_per_example,
                      sgd_trajectory, weighted_inner_loss)
from mass_ref.inner import NonFiniteError
from mass_ref.maml import sine_mlp
from mass_ref.metagrad import weight_meta_gradient
from mass_ref.toy import ToyMassConfig, sample_sine_problems, synthetic_attributions
from tests.problems import DTYPE, tanh_regression_problem


def _problem(seed: int = 0):
    model, support, query = tanh_regression_problem(seed, n=5, scale=0.8)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    weights = torch.linspace(0.1, 0.3, 5, dtype=DTYPE)
    return model, support, query, params, weights


def _plain_sgd(model, support, weights, params, lr, num_steps):
    """K weighted SGD steps written out with torch.autograd on a copy of the module: no package code."""
    clone = copy.deepcopy(model)
    states, losses = [{n: p.detach().clone() for n, p in params.items()}], []
    for _ in range(num_steps):
        with torch.no_grad():
            for n, p in clone.named_parameters():
                p.copy_(states[-1][n])
        loss = (weights * (clone(support[0]) - support[1]).pow(2).mean(-1)).sum()
        grads = torch.autograd.grad(loss, list(clone.parameters()))
        lrs = lr if isinstance(lr, dict) else {n: lr for n in params}
        states.append({n: states[-1][n] - lrs[n] * g for (n, _), g in zip(clone.named_parameters(), grads)})
        losses.append(loss.detach())
    return states, losses


@pytest.mark.parametrize("differentiable", [True, False])
def test_kernel_equals_plain_autograd_sgd(differentiable: bool) -> None:
    model, support, _, params, weights = _problem()
    lrs = {n: 0.1 * (i + 1) for i, n in enumerate(params)}  # one α per tensor (Meta-SGD)
    got = sgd_trajectory(inner_loss_of(model, mse_per_example, support, weights), params, inner_lr=lrs,
                         num_steps=3, differentiable=differentiable)
    states, losses = _plain_sgd(model, support, weights, params, lrs, 3)
    assert len(got.params) == 4 and len(got.losses) == 3
    for k in range(4):
        for n in params:
            assert torch.allclose(got.params[k][n], states[k][n], rtol=0, atol=1e-13), (k, n)
    assert torch.allclose(torch.stack(got.losses), torch.stack(losses), rtol=0, atol=1e-14)


def test_kernel_without_graph_holds_constants_with_graph_differentiates() -> None:
    model, support, _, params, weights = _problem()
    w = weights.clone().requires_grad_()
    loss = inner_loss_of(model, mse_per_example, support, w)
    detached = sgd_trajectory(loss, params, inner_lr=0.3, num_steps=2, differentiable=False)
    attached = sgd_trajectory(loss, params, inner_lr=0.3, num_steps=2)
    assert all(t.grad_fn is None and not t.requires_grad for state in detached.params for t in state.values())
    assert all(t.grad_fn is not None for t in attached.params[-1].values())
    for n in params:
        assert torch.equal(detached.params[-1][n], attached.params[-1][n].detach())
    first_order = sgd_trajectory(loss, params, inner_lr=0.3, num_steps=2, first_order=True)
    assert all(not t.requires_grad for t in first_order.params[-1].values())  # FOMAML: φ_K no longer sees w


def test_inner_adapt_and_the_higher_backend_equal_the_kernel() -> None:
    model, support, _, params, weights = _problem(1)
    kernel = sgd_trajectory(inner_loss_of(model, mse_per_example, support, weights), params, inner_lr=0.2,
                            num_steps=3).params[-1]
    for backend in ("torch.func", "higher"):
        adapted = inner_adapt(model, mse_per_example, support, inner_lr=0.2, num_steps=3, weights=weights,
                              backend=backend, params=params)
        for n in params:
            assert torch.allclose(adapted.params[n], kernel[n], rtol=0, atol=1e-13), (backend, n)


@pytest.mark.parametrize("num_steps", [1, 3])
def test_alignment_attributions_is_the_first_order_meta_gradient(num_steps: int) -> None:
    model, support, query, params, weights = _problem(2)
    got = alignment_attributions(model, mse_per_example, support, query, inner_lr=0.3, num_steps=num_steps,
                                 weights=weights, params=params)
    ref = weight_meta_gradient(model, mse_per_example, support, lambda f: mse_per_example(f, query).mean(),
                               weights=weights, inner_lr=0.3, num_steps=num_steps, params=params, mode="first_order")
    assert (got - ref.weights).abs().max().item() <= 1e-16


@pytest.mark.parametrize("num_steps", [1, 3])
def test_example_attributions_equal_every_exact_meta_gradient_mode(num_steps: int) -> None:
    model, support, query, params, weights = _problem(3)
    definition = example_attributions(model, mse_per_example, support, query, inner_lr=0.3, num_steps=num_steps,
                                      weights=weights, params=params)
    for mode in ("unroll", "checkpointed", "forward_over_reverse"):
        meta = weight_meta_gradient(model, mse_per_example, support, lambda f: mse_per_example(f, query).mean(),
                                    weights=weights, inner_lr=0.3, num_steps=num_steps, params=params, mode=mode)
        assert torch.allclose(meta.weights, definition, rtol=1e-10, atol=1e-14), mode


@pytest.mark.parametrize("mode", ["unroll", "checkpointed", "forward_over_reverse", "first_order"])
def test_one_step_size_per_tensor_meta_gradients(mode: str) -> None:
    """Meta-SGD's α: a mapping with equal values is the float; unequal values match chapter 2's definition."""
    model, support, query, params, weights = _problem(4)
    outer = lambda f: mse_per_example(f, query).mean()  # noqa: E731
    kw = dict(weights=weights, num_steps=1 if mode == "first_order" else 3, params=params, mode=mode)
    same = weight_meta_gradient(model, mse_per_example, support, outer, inner_lr={n: 0.3 for n in params}, **kw)
    flat = weight_meta_gradient(model, mse_per_example, support, outer, inner_lr=0.3, **kw)
    assert torch.allclose(same.weights, flat.weights, rtol=1e-12, atol=0)
    lrs = {n: 0.1 * (i + 1) for i, n in enumerate(params)}
    got = weight_meta_gradient(model, mse_per_example, support, outer, inner_lr=lrs, **kw)
    definition = example_attributions(model, mse_per_example, support, query, inner_lr=lrs,
                                      num_steps=kw["num_steps"], weights=weights, params=params)
    assert torch.allclose(got.weights, definition, rtol=1e-10, atol=1e-14)


def test_meta_gradient_refuses_mismatched_step_sizes() -> None:
    model, support, query, params, weights = _problem()
    with pytest.raises(ValueError, match="missing"):
        weight_meta_gradient(model, mse_per_example, support, lambda f: mse_per_example(f, query).mean(),
                             weights=weights, inner_lr={"0.weight": 0.1}, num_steps=1, params=params)


def test_toy_attributions_equal_the_unrolled_meta_gradient_per_problem() -> None:
    learner = sine_mlp(dtype=DTYPE)
    problems = sample_sine_problems(3, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    x = torch.rand(3, 4, 1, generator=torch.Generator().manual_seed(2), dtype=DTYPE) * 10 - 5
    y = problems.true_labels(x) + 0.3
    weights = torch.full((3, 4), 0.25, dtype=DTYPE, requires_grad=True)
    config = ToyMassConfig(num_inner_steps=2, inner_lr=0.05)
    _, _, batched = synthetic_attributions(learner, problems, x, y, weights, config, generator=torch.Generator())
    params = {n: p.detach() for n, p in learner.named_parameters()}
    for b in range(3):
        outer = lambda f, b=b: (f(problems.x_target[b].view(1, 1))[0, 0] - problems.y_target[b]).pow(2)  # noqa: E731
        meta = weight_meta_gradient(learner, mse_per_example, (x[b], y[b]), outer, weights=weights[b].detach(),
                                    inner_lr=0.05, num_steps=2, params=params)
        assert torch.allclose(batched[b], meta.weights, rtol=1e-10, atol=1e-14), b


def test_weighted_inner_loss_is_what_the_kernel_descends() -> None:
    model, support, _, params, weights = _problem()
    trajectory = sgd_trajectory(inner_loss_of(model, mse_per_example, support, weights), params, inner_lr=0.3,
                                num_steps=1, differentiable=False)
    assert torch.equal(trajectory.losses[0], weighted_inner_loss(mse_per_example(model, support), weights).detach())


@pytest.mark.parametrize("mode", ["unroll", "checkpointed", "first_order"])
def test_a_constant_outer_loss_has_zero_meta_gradients(mode: str) -> None:
    """A verifier group with no signal gives L_out ≡ 0; the meta-gradient is exactly zero (unroll skips its backward)."""
    model, support, _, params, weights = _problem()
    meta = weight_meta_gradient(model, mse_per_example, support, lambda f: torch.zeros((), dtype=DTYPE),
                                weights=weights, inner_lr=0.3, num_steps=2, params=params, mode=mode)
    assert meta.outer_loss.item() == 0.0 and not meta.weights.any()
    assert all(not g.any() for g in meta.params.values())


# --- non-finite inputs and a diverging inner loop (issue 14) -------------------------------------------------------


def _sine_task(seed: int = 0):
    torch.manual_seed(seed)
    model = sine_mlp()
    x = torch.linspace(-5, 5, 10).view(-1, 1)
    return model, (x, torch.sin(x))


@pytest.mark.parametrize("backend", ["torch.func", "higher"])
def test_a_diverging_inner_loop_names_the_step_instead_of_returning_nan(backend: str) -> None:
    model, batch = _sine_task()
    with pytest.raises(NonFiniteError, match=r"inner step \d+: .*inner_lr \(now 1000") as caught:
        inner_adapt(model, mse_per_example, batch, inner_lr=1e3, num_steps=5, backend=backend)
    assert caught.value.step is not None and 0 <= caught.value.step < 5
    assert caught.value.what in ("loss", "parameters")
    assert isinstance(caught.value, FloatingPointError)
    adapted = inner_adapt(model, mse_per_example, batch, inner_lr=1e-2, num_steps=5, backend=backend)  # still fine
    assert all(torch.isfinite(p).all() for p in adapted.params.values())


def test_the_kernel_locates_the_first_non_finite_step() -> None:
    start = {"x": torch.tensor([1.0])}
    # L = x² until x passes 10, then log(-1) = NaN: the loss of step 2 (x = 1 → -5 → 25) is the first NaN
    loss = lambda p: torch.where(p["x"].abs() > 10, torch.log(-p["x"].abs()), p["x"] ** 2).sum()  # noqa: E731
    with pytest.raises(NonFiniteError, match=r"inner step 2: the inner loss L_in\(φ_2\) is nan") as caught:
        sgd_trajectory(loss, start, inner_lr=3.0, num_steps=4)
    assert (caught.value.step, caught.value.what) == (2, "loss")
    # finite losses but a step that overflows float32: the parameters are named
    with pytest.raises(NonFiniteError, match=r"inner step 0: the parameters φ_1 went non-finite \(x\)") as caught:
        sgd_trajectory(lambda p: (p["x"] * 1e30).sum(), start, inner_lr=1e10, num_steps=2)
    assert (caught.value.step, caught.value.what) == (0, "parameters")


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -0.1, 0.0])
def test_nan_infinite_or_non_positive_learning_rates_are_refused_before_any_work(lr: float) -> None:
    calls = []

    def loss(p):
        calls.append(1)
        return p["x"].pow(2).sum()

    for value in (lr, torch.tensor(lr), {"x": lr}):
        with pytest.raises(ValueError, match="inner_lr.*finite and positive"):
            sgd_trajectory(loss, {"x": torch.ones(2)}, inner_lr=value, num_steps=2)
    model, batch = _sine_task()
    for backend in ("torch.func", "higher"):
        with pytest.raises(ValueError, match="inner_lr.*finite and positive"):
            inner_adapt(model, mse_per_example, batch, inner_lr=torch.tensor(lr), backend=backend)
    assert not calls


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("backend", ["torch.func", "higher"])
def test_nan_or_infinite_weights_are_refused_naming_the_entry(bad: float, backend: str) -> None:
    model, batch = _sine_task()
    weights = torch.full((10,), 0.1)
    weights[3] = bad
    with pytest.raises(ValueError, match=rf"weights must be finite; entries \[3\] are \[{bad}\]"):
        inner_adapt(model, mse_per_example, batch, inner_lr=0.01, weights=weights, backend=backend)


def test_the_checks_are_skipped_inside_vmap_and_keep_grad_working() -> None:
    """Inside vmap a tensor cannot steer Python: the kernel returns (NaN) instead of failing on its own check."""
    model, (x, y) = _sine_task()
    params = {n: p.detach() for n, p in model.named_parameters()}

    def adapted_prediction(xs, ys, ws):
        adapted = inner_adapt(model, mse_per_example, (xs, ys), inner_lr=1e3, num_steps=5, weights=ws,
                              backend="torch.func", params=params)
        return adapted(xs)[0, 0]

    out = torch.func.vmap(adapted_prediction)(x.expand(2, 10, 1), y.expand(2, 10, 1), torch.full((2, 10), 0.1))
    assert not torch.isfinite(out).any()
    # under torch.func.grad (no vmap) the check runs, and a finite loop passes through it
    grad_w = torch.func.grad(lambda w: inner_adapt(model, mse_per_example, (x, y), inner_lr=0.01, num_steps=2,
                                                   weights=w, backend="torch.func", params=params)(x).sum())
    assert torch.isfinite(grad_w(torch.full((10,), 0.1))).all()
    with pytest.raises(NonFiniteError):
        torch.func.grad(lambda w: inner_adapt(model, mse_per_example, (x, y), inner_lr=1e3, num_steps=5, weights=w,
                                              backend="torch.func", params=params)(x).sum())(torch.full((10,), 0.1))
