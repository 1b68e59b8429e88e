"""The differentiable inner loop against finite differences, the other backend, and closed forms."""

from __future__ import annotations

from problems import tanh_regression_problem

import pytest
import torch
from torch import Tensor, nn

from mass_ref import AdaptedModel, inner_adapt, mse_per_example

BACKENDS = ["higher", "torch.func"]
DTYPE = torch.float64


def make_problem(seed: int = 0, n: int = 6) -> tuple[nn.Module, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    return tanh_regression_problem(seed, n)


def outer_loss(model: nn.Module, support, query, *, params=None, inner_lr=0.1, weights=None, **kw) -> Tensor:
    adapted = inner_adapt(
        model, mse_per_example, support, inner_lr=inner_lr, weights=weights, params=params, **kw
    )
    return mse_per_example(adapted, query).mean()


def central_difference(f, x: Tensor, direction: Tensor, eps: float = 1e-6) -> float:
    return ((f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)).item()


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_steps", [1, 2, 3])
def test_meta_gradients_match_finite_differences(backend: str, num_steps: int) -> None:
    model, support, query = make_problem()
    n = support[0].shape[0]
    names = [name for name, _ in model.named_parameters()]
    theta0 = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    lr = torch.tensor(0.1, dtype=DTYPE, requires_grad=True)
    w = torch.full((n,), 1.0 / n, dtype=DTYPE, requires_grad=True)
    kw = dict(backend=backend, num_steps=num_steps)

    loss = outer_loss(model, support, query, params=theta0, inner_lr=lr, weights=w, **kw)
    *g_theta, g_lr, g_w = torch.autograd.grad(loss, [*theta0.values(), lr, w])
    assert all(g.abs().sum() > 0 for g in g_theta)

    # θ_0 along a random direction
    gen = torch.Generator().manual_seed(1)
    v = {name: torch.randn(p.shape, generator=gen, dtype=DTYPE) for name, p in theta0.items()}
    flat = lambda d: torch.cat([d[k].reshape(-1) for k in names])  # noqa: E731
    unflat = lambda x: {k: t.view_as(theta0[k]) for k, t in zip(names, x.split([theta0[k].numel() for k in names]))}  # noqa: E731
    with torch.no_grad():
        fd = central_difference(
            lambda x: outer_loss(model, support, query, params=unflat(x), inner_lr=lr, weights=w, **kw),
            flat({k: t.detach() for k, t in theta0.items()}), flat(v),
        )
    analytic = sum((g * v[k]).sum() for g, k in zip(g_theta, names)).item()
    assert rel_err(analytic, fd) <= 1e-6

    # the inner learning rate α
    fd_lr = central_difference(
        lambda a: outer_loss(model, support, query, params=theta0, inner_lr=a, weights=w, **kw).detach(),
        lr.detach(), torch.ones((), dtype=DTYPE),
    )
    assert rel_err(g_lr.item(), fd_lr) <= 1e-6

    # every per-example weight w_i
    for i in range(n):
        e_i = torch.zeros(n, dtype=DTYPE)
        e_i[i] = 1.0
        fd_w = central_difference(
            lambda ww: outer_loss(model, support, query, params=theta0, inner_lr=lr, weights=ww, **kw).detach(),
            w.detach(), e_i,
        )
        assert rel_err(g_w[i].item(), fd_w) <= 1e-6


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("num_steps", [1, 2])
def test_backends_agree(first_order: bool, num_steps: int) -> None:
    model, support, query = make_problem(seed=3)
    n = support[0].shape[0]
    results = {}
    for backend in BACKENDS:
        lr = {name: torch.tensor(0.05 + 0.01 * i, dtype=DTYPE, requires_grad=True)
              for i, (name, _) in enumerate(model.named_parameters())}
        w = torch.linspace(0.5, 1.5, n, dtype=DTYPE).requires_grad_()
        loss = outer_loss(model, support, query, inner_lr=lr, weights=w, backend=backend,
                          num_steps=num_steps, first_order=first_order)
        grads = torch.autograd.grad(loss, [*model.parameters(), *lr.values(), w], allow_unused=True)
        results[backend] = (loss.detach(), [torch.zeros(1, dtype=DTYPE) if g is None else g for g in grads])
    (loss_h, grads_h), (loss_f, grads_f) = results["higher"], results["torch.func"]
    assert abs(loss_h - loss_f).item() <= 1e-10
    for gh, gf in zip(grads_h, grads_f):
        assert (gh - gf).abs().max().item() <= 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_order_differs_from_exact(backend: str) -> None:
    model, support, query = make_problem(seed=4)
    grads = {}
    for first_order in (False, True):
        loss = outer_loss(model, support, query, inner_lr=0.3, num_steps=2, backend=backend, first_order=first_order)
        grads[first_order] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
    relative = (grads[True] - grads[False]).norm() / grads[False].norm()
    assert relative > 1e-3, f"first-order gradient is {relative:.2e} from exact: the second-order term went missing"
    assert relative < 1.0  # still a sensible approximation, not garbage


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_order_has_no_weight_gradient(backend: str) -> None:
    model, support, query = make_problem()
    w = torch.ones(support[0].shape[0], dtype=DTYPE, requires_grad=True)
    loss = outer_loss(model, support, query, weights=w, backend=backend, first_order=True)
    (g_w,) = torch.autograd.grad(loss, [w], allow_unused=True)
    assert g_w is None or g_w.abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_step_weight_gradient_equals_gradient_alignment(backend: str) -> None:
    """∂L_outer/∂w_i = −α ⟨∇L_outer(θ'), ∇ℓ_i(θ)⟩ exactly, for one SGD step."""
    model, support, query = make_problem(seed=5)
    alpha, n = 0.2, support[0].shape[0]
    w = torch.rand(n, dtype=DTYPE, generator=torch.Generator().manual_seed(0)).requires_grad_()
    adapted = inner_adapt(model, mse_per_example, support, inner_lr=alpha, weights=w, backend=backend)
    (g_w,) = torch.autograd.grad(mse_per_example(adapted, query).mean(), [w])

    # Independent computation: plain autograd, no inner_adapt.
    theta = [p.detach() for p in model.parameters()]
    theta_prime = {name: p.detach().clone().requires_grad_() for name, p in adapted.params.items()}
    grad_outer = torch.autograd.grad(mse_per_example(AdaptedModel(model, theta_prime), query).mean(),
                                     list(theta_prime.values()))
    expected = []
    for i in range(n):
        loss_i = mse_per_example(model, (support[0][i : i + 1], support[1][i : i + 1]))[0]
        grad_i = torch.autograd.grad(loss_i, list(model.parameters()))
        expected.append(-alpha * sum((a * b).sum() for a, b in zip(grad_outer, grad_i)))
    assert torch.allclose(g_w, torch.stack(expected), rtol=0, atol=1e-12)
    assert theta[0].data_ptr() == next(model.parameters()).data_ptr()  # the model itself was not modified


def test_adapts_only_the_chosen_subset() -> None:
    model, support, query = make_problem()
    last = {"2.weight": model[2].weight}
    adapted = inner_adapt(model, mse_per_example, support, inner_lr=0.1, backend="torch.func", params=last)
    assert set(adapted.params) == {"2.weight"}
    loss = mse_per_example(adapted, query).mean()
    g_first, g_last = torch.autograd.grad(loss, [model[0].weight, model[2].weight])
    assert g_first.abs().sum() > 0 and g_last.abs().sum() > 0  # θ_0 of both layers still gets a meta-gradient


def test_vmap_over_tasks_equals_a_loop() -> None:
    model, (xs, ys), _ = make_problem(n=5)
    xs_batch, ys_batch = torch.stack([xs, xs + 1, xs - 1]), torch.stack([ys, -ys, 2 * ys])

    def adapt(x: Tensor, y: Tensor) -> Tensor:
        return inner_adapt(model, mse_per_example, (x, y), inner_lr=0.1, num_steps=2, backend="torch.func")(x)

    looped = torch.stack([adapt(x, y) for x, y in zip(xs_batch, ys_batch)])
    assert torch.allclose(torch.func.vmap(adapt)(xs_batch, ys_batch), looped, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(inner_lr=0.0), "inner_lr"),
        (dict(inner_lr=-0.01), "inner_lr"),
        (dict(inner_lr=torch.tensor(-1.0)), "inner_lr"),
        (dict(inner_lr={"0.weight": 0.1}), "inner_lr"),
        (dict(inner_lr="0.1"), "inner_lr"),
        (dict(num_steps=0), "num_steps"),
        (dict(num_steps=1.5), "num_steps"),
        (dict(weights=torch.ones(4, dtype=DTYPE)), "weights"),
        (dict(weights=torch.ones(6, 1, dtype=DTYPE)), "weights"),
        (dict(backend="jax"), "backend"),
        (dict(params={"encoder.weight": torch.zeros(1)}), "params"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_name_the_argument(kwargs: dict, named: str, backend: str) -> None:
    model, support, _ = make_problem()
    kwargs = {"inner_lr": 0.1, "backend": backend, **kwargs}
    with pytest.raises(ValueError, match=named):
        inner_adapt(model, mse_per_example, support, **kwargs)


def test_loss_fn_must_return_per_example_losses() -> None:
    model, support, _ = make_problem()
    with pytest.raises(ValueError, match="one loss per example"):
        inner_adapt(model, lambda f, b: mse_per_example(f, b).mean(), support, inner_lr=0.1)
