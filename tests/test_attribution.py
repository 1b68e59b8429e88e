"""Per-example attributions against finite differences, the other backend, closed forms and leave-one-out."""

from __future__ import annotations

from problems import tanh_regression_problem

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor, nn

from mass_ref import (
    AdaptedModel,
    alignment_attributions,
    example_attributions,
    inner_adapt,
    leave_one_out_changes,
    mse_per_example,
    query_loss_after_adapting,
    roc_auc,
    spearman,
)

BACKENDS = ["higher", "torch.func"]
DTYPE = torch.float64


Batch = tuple[Tensor, Tensor]


def make_problem(seed: int = 0, n: int = 6, scale: float = 1.0) -> tuple[nn.Module, Batch, Batch]:
    return tanh_regression_problem(seed, n, scale=scale)


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a - b).abs() / torch.maximum(torch.maximum(a.abs(), b.abs()), torch.tensor(1e-12))).max().item()


def flat(grads: dict[str, Tensor]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_steps", [1, 2, 3])
def test_attributions_match_finite_differences(backend: str, num_steps: int) -> None:
    model, support, query = make_problem()
    n = support[0].shape[0]
    weights = torch.linspace(0.1, 0.3, n, dtype=DTYPE)  # not the default: the derivative is taken at w
    kw = dict(inner_lr=0.1, num_steps=num_steps, backend=backend)
    g = example_attributions(model, mse_per_example, support, query, weights=weights, **kw)
    assert g.shape == (n,) and not g.requires_grad
    eps = 1e-6
    fd = []
    for i in range(n):
        e_i = torch.zeros(n, dtype=DTYPE)
        e_i[i] = eps
        plus = query_loss_after_adapting(model, mse_per_example, support, query, weights=weights + e_i, **kw)
        minus = query_loss_after_adapting(model, mse_per_example, support, query, weights=weights - e_i, **kw)
        fd.append(((plus - minus) / (2 * eps)).detach())
    assert rel_err(g, torch.stack(fd)) <= 1e-6


@pytest.mark.parametrize("num_steps", [1, 2])
def test_backends_agree(num_steps: int) -> None:
    model, support, query = make_problem(seed=2)
    g = {b: example_attributions(model, mse_per_example, support, query, inner_lr=0.1, num_steps=num_steps, backend=b)
         for b in BACKENDS}
    d = {b: leave_one_out_changes(model, mse_per_example, support, query, inner_lr=0.1, num_steps=num_steps, backend=b)
         for b in BACKENDS}
    assert g["higher"].abs().min() > 1e-6  # a real comparison, not of zeros
    assert (g["higher"] - g["torch.func"]).abs().max().item() <= 1e-10
    assert (d["higher"] - d["torch.func"]).abs().max().item() <= 1e-10


def test_one_step_attribution_is_gradient_alignment() -> None:
    """g_i = −α ⟨∇L_Q(θ'), ∇ℓ_i(θ)⟩, computed here with plain autograd and per-example loops."""
    model, support, query = make_problem(seed=5)
    alpha, n = 0.2, support[0].shape[0]
    g = example_attributions(model, mse_per_example, support, query, inner_lr=alpha)
    adapted = inner_adapt(model, mse_per_example, support, inner_lr=alpha, first_order=True)
    theta_prime = {k: v.detach().requires_grad_() for k, v in adapted.params.items()}
    query_loss = mse_per_example(AdaptedModel(model, theta_prime), query).mean()
    grad_q = torch.autograd.grad(query_loss, list(theta_prime.values()))
    expected = []
    for i in range(n):
        loss_i = mse_per_example(model, (support[0][i : i + 1], support[1][i : i + 1]))[0]
        grad_i = torch.autograd.grad(loss_i, list(model.parameters()))
        expected.append(-alpha * sum((a * b).sum() for a, b in zip(grad_q, grad_i)))
    assert (g - torch.stack(expected)).abs().max().item() <= 1e-12
    first_order = alignment_attributions(model, mse_per_example, support, query, inner_lr=alpha)
    assert (first_order - g).abs().max().item() <= 1e-12


def test_two_step_attribution_is_alignment_plus_curvature_term() -> None:
    """g_i = −α⟨∇L_Q(θ_2), ∇ℓ_i(θ_0) + ∇ℓ_i(θ_1)⟩ + α²⟨∇L_Q(θ_2), H_1 ∇ℓ_i(θ_0)⟩ (independent, via jacrev/jvp)."""
    model, support, query = make_problem(seed=6)
    alpha, n = 0.3, support[0].shape[0]
    w = torch.full((n,), 1.0 / n, dtype=DTYPE)

    def per_example(p: dict, batch) -> Tensor:
        return mse_per_example(AdaptedModel(model, p), batch)

    def inner(p: dict) -> Tensor:
        return (w * per_example(p, support)).sum()

    def step(p: dict) -> dict:
        return {k: p[k] - alpha * g for k, g in torch.func.grad(inner)(p).items()}

    theta0 = {k: v.detach() for k, v in model.named_parameters()}
    theta1 = step(theta0)
    theta2 = step(theta1)
    grad_q = flat(torch.func.grad(lambda p: per_example(p, query).mean())(theta2))
    jac0 = torch.func.jacrev(lambda p: per_example(p, support))(theta0)
    jac1 = torch.func.jacrev(lambda p: per_example(p, support))(theta1)
    rows0 = [{k: v[i] for k, v in jac0.items()} for i in range(n)]
    alignment = torch.stack([-alpha * grad_q @ (flat(r0) + flat({k: v[i] for k, v in jac1.items()}))
                             for i, r0 in enumerate(rows0)])
    curvature = torch.stack([alpha**2 * grad_q @ flat(torch.func.jvp(torch.func.grad(inner), (theta1,), (r0,))[1])
                             for r0 in rows0])
    exact = example_attributions(model, mse_per_example, support, query, inner_lr=alpha, num_steps=2)
    first_order = alignment_attributions(model, mse_per_example, support, query, inner_lr=alpha, num_steps=2)
    assert (first_order - alignment).abs().max().item() <= 1e-12
    assert (exact - (alignment + curvature)).abs().max().item() <= 1e-10
    assert curvature.abs().max() > 1e-3 * exact.abs().max()  # the second step really adds a term


def test_per_parameter_step_sizes_in_the_first_order_attribution() -> None:
    model, support, query = make_problem(seed=7)
    lrs = {name: 0.05 * (i + 1) for i, (name, _) in enumerate(model.named_parameters())}
    exact = example_attributions(model, mse_per_example, support, query, inner_lr=lrs)
    first_order = alignment_attributions(model, mse_per_example, support, query, inner_lr=lrs)
    assert (first_order - exact).abs().max().item() <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_leave_one_out_is_re_adaptation_without_the_example(backend: str) -> None:
    model, support, query = make_problem(seed=8, n=5)
    n = support[0].shape[0]
    changes = leave_one_out_changes(model, mse_per_example, support, query, inner_lr=0.1, num_steps=2, backend=backend)
    full = query_loss_after_adapting(model, mse_per_example, support, query, inner_lr=0.1, num_steps=2)
    for i in range(n):
        keep = [j for j in range(n) if j != i]
        # dropping i == adapting on the others only, with their weights 1/n unchanged
        without = inner_adapt(model, mse_per_example, (support[0][keep], support[1][keep]), inner_lr=0.1, num_steps=2,
                              weights=torch.full((n - 1,), 1.0 / n, dtype=DTYPE))
        expected = mse_per_example(without, query).mean() - full
        assert abs(changes[i].item() - expected.item()) <= 1e-12


def test_attributions_rank_leave_one_out_changes() -> None:
    """With many points (small 1/n perturbations), −g_i orders the actual leave-one-out changes."""
    model, support, query = make_problem(seed=9, n=30, scale=0.7)
    g = example_attributions(model, mse_per_example, support, query, inner_lr=0.05, num_steps=2)
    changes = leave_one_out_changes(model, mse_per_example, support, query, inner_lr=0.05, num_steps=2)
    assert spearman(-g, changes) >= 0.95


def test_leave_one_out_change_is_minus_weight_times_attribution_for_small_weights() -> None:
    """Δ_i = −w_i g_i + O(w_i²): with tiny weights the first-order prediction is all there is."""
    model, support, query = make_problem(seed=9, n=8)
    weights = torch.full((8,), 1e-4, dtype=DTYPE)
    kw = dict(inner_lr=0.1, num_steps=2, weights=weights)
    g = example_attributions(model, mse_per_example, support, query, **kw)
    changes = leave_one_out_changes(model, mse_per_example, support, query, **kw)
    assert rel_err(changes, -weights * g) <= 1e-2


def test_a_corrupted_label_gets_the_most_harmful_attribution() -> None:
    model, (xs, ys), query = make_problem(seed=10, n=12, scale=0.7)
    # adapt until the learner fits the support set, so that a wrong label hurts
    model_fit = inner_adapt(model, mse_per_example, (xs, ys), inner_lr=0.2, num_steps=50, first_order=True)
    fitted = {k: v.detach() for k, v in model_fit.params.items()}
    bad = ys.clone()
    bad[3] += 2.0
    g = example_attributions(model, mse_per_example, (xs, bad), query, inner_lr=0.1, num_steps=3, params=fitted)
    assert g.argmax().item() == 3 and g[3] > 0


def test_vmap_over_tasks_equals_a_loop() -> None:
    model, (xs, ys), (xq, yq) = make_problem(seed=11, n=5)
    xs_b, ys_b = torch.stack([xs, xs + 0.5, xs - 0.5]), torch.stack([ys, -ys, 2 * ys])
    xq_b, yq_b = torch.stack([xq] * 3), torch.stack([yq, -yq, 2 * yq])
    for fn in (example_attributions, alignment_attributions, leave_one_out_changes):
        def one(a: Tensor, b: Tensor, c: Tensor, d: Tensor, fn=fn) -> Tensor:
            return fn(model, mse_per_example, (a, b), (c, d), inner_lr=0.1, num_steps=2)

        looped = torch.stack([one(*task) for task in zip(xs_b, ys_b, xq_b, yq_b)])
        assert (torch.func.vmap(one)(xs_b, ys_b, xq_b, yq_b) - looped).abs().max().item() <= 1e-12, fn.__name__


def test_the_model_is_left_alone() -> None:
    model, support, query = make_problem()
    before = [p.detach().clone() for p in model.parameters()]
    example_attributions(model, mse_per_example, support, query, inner_lr=0.1, num_steps=2, backend="higher")
    leave_one_out_changes(model, mse_per_example, support, query, inner_lr=0.1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_roc_auc_counts_ordered_pairs() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=40), 1)  # with ties
    labels = (rng.random(40) < 0.3).astype(int)
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert roc_auc(scores, labels) == pytest.approx(brute, abs=1e-12)
    assert roc_auc(torch.tensor([0.1, 0.9, 0.8]), torch.tensor([0, 1, 1])) == 1.0
    assert roc_auc([0.9, 0.1, 0.2], [0, 1, 1]) == 0.0
    assert roc_auc([0.5, 0.5], [0, 1]) == 0.5


def test_spearman_is_the_rank_correlation() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    b = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    assert spearman(a, b) == pytest.approx(stats.pearsonr(stats.rankdata(a), stats.rankdata(b)).statistic)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(backend="jax"), "backend"),
        (dict(weights=torch.ones(4, dtype=DTYPE)), "weights"),
        (dict(weights=torch.ones(6, 1, dtype=DTYPE)), "weights"),
        (dict(inner_lr=-0.1), "inner_lr"),
        (dict(num_steps=0), "num_steps"),
    ],
)
@pytest.mark.parametrize("fn", [example_attributions, leave_one_out_changes, alignment_attributions])
def test_bad_arguments_name_the_argument(fn, kwargs: dict, named: str) -> None:
    if fn is alignment_attributions and named == "backend":
        kwargs, named = dict(inner_lr="fast"), "inner_lr"  # no backend argument: it is backend-free
    model, support, query = make_problem()
    kwargs = {"inner_lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=named):
        fn(model, mse_per_example, support, query, **kwargs)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (([1.0, 2.0], [0, 1, 1]), "scores"),
        (([1.0, 2.0, 3.0], [0, 2, 1]), "labels"),
        (([1.0, 2.0, 3.0], [1, 1, 1]), "labels"),
        (([[1.0, 2.0]], [[0, 1]]), "scores"),
    ],
)
def test_roc_auc_bad_arguments(args: tuple, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        roc_auc(*args)


def test_spearman_bad_arguments() -> None:
    with pytest.raises(ValueError, match="a and b"):
        spearman([1.0, 2.0, 3.0], [1.0, 2.0])
