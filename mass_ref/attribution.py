"""Per-example data attribution: meta-gradients of the post-adaptation loss w.r.t. example weights.

The inner loop (:func:`mass_ref.inner_adapt`) takes K steps on a *weighted* support loss,

    θ_{t+1} = θ_t − α ∇_θ Σ_i w_i ℓ_i(θ_t),      t = 0..K−1,      (w_i = 1/n by default)

and the outer loss is the mean query loss after adapting, L(w) = L_Q(θ_K(w)). The attribution of
support example i is the meta-gradient

    g_i = ∂L/∂w_i                                                     (MASS: ∂L_outer/∂s_i)

* one step:  g_i = −α ⟨∇L_Q(θ_1), ∇ℓ_i(θ_0)⟩                          (gradient alignment, exact)
* two steps: g_i = −α ⟨∇L_Q(θ_2), ∇ℓ_i(θ_0) + ∇ℓ_i(θ_1)⟩ + α² ⟨∇L_Q(θ_2), H_1 ∇ℓ_i(θ_0)⟩,
  with H_1 = Σ_j w_j ∇²ℓ_j(θ_1); the first-order approximation keeps only the first term:
  g_i ≈ −α Σ_t ⟨∇L_Q(θ_K), ∇ℓ_i(θ_t)⟩ (:func:`alignment_attributions`).

Sign convention: g_i > 0 means that up-weighting example i *raises* the query loss (harmful);
dropping it (w_i → 0) changes the loss by about −w_i g_i (:func:`leave_one_out_changes` measures
the actual change by re-adapting).

Shapes: ``support`` and ``query`` are batches that ``loss_fn`` understands, e.g. ``(x [n, d],
y [n, 1])``; ``weights`` and every returned attribution vector have shape ``[n]``. With the
default ``backend="torch.func"`` every function here is a pure function of its tensor arguments,
so ``torch.func.vmap`` maps it over a batch of tasks.

Introduced in notebooks/02_metagradients_through_data.ipynb.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mass_ref.inner import BACKENDS, AdaptedModel, LearningRate, PerExampleLoss, inner_adapt
from mass_ref.metagrad import weight_meta_gradient


def query_loss_after_adapting(
    model: nn.Module,
    loss_fn: PerExampleLoss,
    support: Any,
    query: Any,
    *,
    inner_lr: LearningRate,
    num_steps: int = 1,
    weights: Tensor | None = None,
    backend: str = "torch.func",
    params: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """L(w) = mean_q ℓ_q(θ_K(w)): the mean query loss after ``num_steps`` weighted steps on ``support``.

    Arguments as for :func:`mass_ref.inner_adapt`; ``params`` defaults to the model's trainable
    parameters *detached*, so that no graph is built towards θ_0. Returns a scalar tensor that is
    differentiable with respect to ``weights`` (and ``inner_lr`` when it is a tensor).

    Introduced in notebooks/02_metagradients_through_data.ipynb.
    """
    start = _detached_params(model) if params is None else params
    adapted = inner_adapt(model, loss_fn, support, inner_lr=inner_lr, num_steps=num_steps, weights=weights,
                          backend=backend, params=start)
    return loss_fn(adapted, query).mean()


def example_attributions(
    model: nn.Module,
    loss_fn: PerExampleLoss,
    support: Any,
    query: Any,
    *,
    inner_lr: LearningRate,
    num_steps: int = 1,
    weights: Tensor | None = None,
    backend: str = "torch.func",
    params: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """The exact attribution g_i = ∂L_Q(θ_K(w))/∂w_i of every support example, shape ``[n]``.

    Differentiates through all ``num_steps`` inner steps (second order). ``weights`` is the point
    w at which the derivative is taken (default: uniform 1/n). ``backend="torch.func"`` uses
    ``torch.func.grad`` and is vmap-able over tasks; ``"higher"`` uses ``torch.autograd.grad``.
    The result is detached.

    Raises:
        ValueError: bad ``backend``, ``weights`` shape, ``inner_lr`` or ``num_steps``.

    Introduced in notebooks/02_metagradients_through_data.ipynb.
    """
    _check_backend(backend)
    start = _detached_params(model) if params is None else params
    w0 = _weights_or_uniform(model, loss_fn, support, weights, start)

    def loss_at(w: Tensor) -> Tensor:
        return query_loss_after_adapting(model, loss_fn, support, query, inner_lr=inner_lr, num_steps=num_steps,
                                         weights=w, backend=backend, params=start)

    if backend == "torch.func":
        return torch.func.grad(loss_at)(w0).detach()
    w = w0.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss_at(w), [w])
    return grad.detach()


def alignment_attributions(
    model: nn.Module,
    loss_fn: PerExampleLoss,
    support: Any,
    query: Any,
    *,
    inner_lr: LearningRate,
    num_steps: int = 1,
    weights: Tensor | None = None,
    params: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """First-order attribution: g_i ≈ −Σ_t ⟨α ⊙ ∇L_Q(θ_K), ∇ℓ_i(θ_t)⟩, shape ``[n]``.

    The sum over inner steps of each example's gradient alignment with the *final* query gradient
    (TracIn-style). It drops the curvature factors (I − α H_s) of the later steps, so it equals
    :func:`example_attributions` for ``num_steps=1`` and approximates it beyond. It *is*
    :func:`~mass_ref.metagrad.weight_meta_gradient` with ``mode="first_order"`` and the mean query
    loss as L_out, which it calls: each alignment is one forward-mode product (``torch.func.jvp``) of
    the per-example losses along α ⊙ ∇L_Q(θ_K); no per-example gradient is materialised.
    ``inner_lr`` is a float or ``{name: float}`` (not a tensor). vmap-able; the result is detached.

    Introduced in notebooks/02_metagradients_through_data.ipynb.
    """
    start = _detached_params(model) if params is None else {k: v.detach() for k, v in params.items()}
    w0 = _weights_or_uniform(model, loss_fn, support, weights, start)
    meta = weight_meta_gradient(model, loss_fn, support, lambda forward: loss_fn(forward, query).mean(), weights=w0,
                                inner_lr=_float_lrs(inner_lr), num_steps=num_steps, params=start, mode="first_order",
                                with_params=False)
    return meta.weights


def leave_one_out_changes(
    model: nn.Module,
    loss_fn: PerExampleLoss,
    support: Any,
    query: Any,
    *,
    inner_lr: LearningRate,
    num_steps: int = 1,
    weights: Tensor | None = None,
    backend: str = "torch.func",
    params: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Δ_i = L(w with w_i set to 0) − L(w): the actual change of the query loss when example i is
    dropped and the model re-adapted, shape ``[n]``.

    The other weights keep their values (no renormalisation), so the first-order prediction is
    Δ_i ≈ −w_i g_i. ``backend="torch.func"`` re-adapts all n variants in one ``vmap``; ``"higher"``
    loops. The result is detached.

    Introduced in notebooks/02_metagradients_through_data.ipynb.
    """
    _check_backend(backend)
    start = _detached_params(model) if params is None else params
    w0 = _weights_or_uniform(model, loss_fn, support, weights, start).detach()
    keep = 1.0 - torch.eye(w0.shape[0], dtype=w0.dtype, device=w0.device)

    def loss_at(w: Tensor) -> Tensor:
        return query_loss_after_adapting(model, loss_fn, support, query, inner_lr=inner_lr, num_steps=num_steps,
                                         weights=w, backend=backend, params=start).detach()

    with torch.no_grad():
        full = loss_at(w0)
        if backend == "torch.func":
            dropped = torch.func.vmap(loss_at)(w0 * keep)
        else:
            dropped = torch.stack([loss_at(w0 * row) for row in keep])
    return dropped - full


def _float_lrs(inner_lr: LearningRate) -> float | dict[str, float]:
    """α as the meta-gradient takes it: plain floats (a learnable tensor α has no first-order attribution here)."""
    lrs = inner_lr if isinstance(inner_lr, Mapping) else {"": inner_lr}
    for name, lr in lrs.items():
        if isinstance(lr, Tensor):
            where = f"inner_lr[{name!r}]" if name else "inner_lr"
            raise ValueError(f"alignment_attributions needs float step sizes; got a tensor for {where}. "
                             "Pass float(lr), or use example_attributions for a tensor α.")
    return dict(inner_lr) if isinstance(inner_lr, Mapping) else inner_lr


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}.")


def _detached_params(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _weights_or_uniform(
    model: nn.Module, loss_fn: PerExampleLoss, support: Any, weights: Tensor | None, params: Mapping[str, Tensor]
) -> Tensor:
    """``weights`` after a shape check, or uniform 1/n (n read off the per-example support losses)."""
    with torch.no_grad():
        losses = loss_fn(AdaptedModel(model, dict(params)), support)
    if losses.ndim != 1:
        raise ValueError(f"loss_fn must return one loss per example, shape [n]; got shape {tuple(losses.shape)}.")
    n = losses.shape[0]
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=losses.dtype, device=losses.device)
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), one weight per support example; got {tuple(weights.shape)}.")
    return weights
