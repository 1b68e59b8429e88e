"""Meta-gradients of the weighted inner loop, five ways: exact at different memory costs, or approximate.

The inner loop is K steps of SGD on a weighted loss (as in :func:`~mass_ref.inner.inner_adapt`),

    φ_{k+1} = φ_k − α ∇_φ L_in(φ_k, w),   L_in(φ, w) = Σ_i w_i ℓ_i(φ),   k = 0..K−1,

and the outer loss is L_out(φ_K). :func:`weight_meta_gradient` returns ∂L_out/∂w (MASS's
attributions) and ∂L_out/∂φ_0. Writing v_k = ∂L_out/∂φ_k, reverse mode through one step is

    v_k = v_{k+1} − α H_k v_{k+1},        ∂L_out/∂w += −α (∂²L_in/∂w∂φ)(φ_k) v_{k+1},

with H_k = ∇²_φ L_in(φ_k, w). The modes differ in how they get these two products:

==========================  =====================================================  ===================
mode                        how                                                    memory
==========================  =====================================================  ===================
``unroll``                  one autograd graph through all K steps                 K steps' activations
``checkpointed``            keep only φ_k; rebuild step k's graph on the way back  one step's activations
``forward_over_reverse``    the same, products by ``torch.func.jvp`` over ``grad``  one step, no 2nd graph
``first_order``             drop H_k (v stays ∂L_out/∂φ_K); products by one jvp  one step
``truncated``               exact through the last ``truncate`` steps only         one step (recomputed)
==========================  =====================================================  ===================

The recursion starts from v_K = ∇L_out(φ_K) and runs k = K−1, ..., 0 (H_k is symmetric, so no
transpose appears); the i-th entry of the w-product is ∇ℓ_i(φ_k)·v_{k+1}. The first three modes are
exact (equal up to float rounding; tested in float64). ``first_order``'s attributions are exact for
K = 1, its ∂L_out/∂φ_0 is not (it skips every H_k). Unlike FOMAML (``inner_adapt(first_order=True)``,
which detaches the inner gradients and so gives ∂L_out/∂w = 0), it keeps the mixed w-φ term. Every
mode except ``unroll`` stores the K+1 parameter vectors φ_k, which for LoRA are tiny next to activations.

**One vocabulary for ∂L_out/∂w.** Every attribution in the package is this function's ``weights``
(tests pin each equality):

* :func:`~mass_ref.attribution.alignment_attributions` (chapter 2, TracIn-style) *is*
  ``mode="first_order"`` with L_out = the mean query loss; it calls this function.
* :func:`~mass_ref.attribution.example_attributions` (chapter 2) equals ``mode="unroll"``; it stays
  its own few lines because it is the definition chapter 2 teaches (``torch.func.grad`` of the
  query loss after :func:`~mass_ref.inner.inner_adapt`, either backend, vmap-able over tasks).
* :func:`~mass_ref.toy.mass.synthetic_attributions` (chapter 3) equals ``mode="unroll"`` per problem;
  it differentiates one batched outer loss (all problems adapted in one ``vmap``, or by ``higher``,
  the toy's design backend, which this torch.func-only function cannot run).
* :func:`~mass_ref.lm.mass.lm_meta_step` (chapters 5–7) calls this function with ``LMMassConfig.meta_gradient``.

Introduced in notebooks/06_scalable_metagradients.ipynb; MASS on an LM uses it through
``LMMassConfig.meta_gradient`` (chapter 7 trains real models with ``"checkpointed"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, jvp

from mass_ref.inner import PerExampleLoss, inner_adapt, sgd_trajectory, weighted_inner_loss

__all__ = ["META_GRADIENT_MODES", "MetaGradient", "check_meta_gradient_mode", "weight_meta_gradient"]

META_GRADIENT_MODES = ("unroll", "checkpointed", "forward_over_reverse", "first_order", "truncated")
Params = dict[str, Tensor]


@dataclass
class MetaGradient:
    """The outer loss after the inner loop and its gradients (all detached).

    Attributes:
        outer_loss: L_out(φ_K), a scalar.
        weights: ∂L_out/∂w, shape ``[n]`` (one attribution per support example).
        params: ∂L_out/∂φ_0, ``{name: tensor}`` shaped like the adapted parameters (what the mode
            propagates back: ``first_order`` returns ∂L_out/∂φ_K and ``truncated`` ∂L_out/∂φ_{K−truncate});
            empty with ``with_params=False``.
    """

    outer_loss: Tensor
    weights: Tensor
    params: Params


def weight_meta_gradient(
    model: nn.Module,
    loss_fn: PerExampleLoss,
    support: Any,
    outer_loss_fn: Callable[[Callable[..., Any]], Tensor],
    *,
    weights: Tensor,
    inner_lr: float | Mapping[str, float],
    num_steps: int,
    params: Mapping[str, Tensor],
    mode: str = "unroll",
    truncate: int | None = None,
    with_params: bool = True,
    on_adapted: Callable[[Params], None] | None = None,
) -> MetaGradient:
    """∂L_out(φ_K)/∂w and ∂L_out(φ_K)/∂φ_0 through K weighted SGD steps, by ``mode`` (module table).

    Args:
        model: the learner; run with ``params`` substituted (``torch.func.functional_call``).
        loss_fn: ``loss_fn(forward, support) -> Tensor[n]``, per-example inner losses ℓ_i.
        support: the inner batch, anything ``loss_fn`` understands.
        outer_loss_fn: ``outer_loss_fn(forward) -> scalar``, L_out at the adapted parameters.
        weights: w, shape ``[n]``.
        inner_lr: α > 0: a float (the same step for every parameter) or ``{name: float}`` with one
            step per tensor of ``params`` (Meta-SGD).
        num_steps: K ≥ 1.
        params: φ_0, ``{name: tensor}``, names of parameters of ``model`` (e.g. its LoRA tensors).
        mode: one of :data:`META_GRADIENT_MODES`.
        truncate: for ``mode="truncated"``, how many of the last steps to differentiate through (1..K).
        with_params: also return ∂L_out/∂φ_0. False (MASS needs only the attributions) returns an
            empty ``params`` and saves the last Hessian-vector product: step 0's w-product is then one jvp.
        on_adapted: called once with φ_K as constants (detached ``{name: tensor}``) after the inner steps
            and before ``outer_loss_fn``: what the outer loss needs from the adapted model that is not
            differentiated (MASS's verifier samples its answers there), without a second inner loop.
    """
    _check(weights, inner_lr, num_steps, params, mode, truncate)
    phi0 = {name: t.detach() for name, t in params.items()}
    w = weights.detach()

    def forward_with(p: Params) -> Callable[..., Any]:
        return lambda *args, **kwargs: functional_call(model, p, args, kwargs, strict=False)

    def per_example(p: Params) -> Tensor:
        return loss_fn(forward_with(p), support)

    def inner(p: Params, w_: Tensor) -> Tensor:
        return weighted_inner_loss(per_example(p), w_)

    def outer(p: Params) -> Tensor:
        return outer_loss_fn(forward_with(p))

    if mode == "unroll":
        return _unroll(model, loss_fn, support, outer, phi0, w, inner_lr, num_steps, with_params, on_adapted)
    # φ_0..φ_K without any graph: the only state kept across steps
    trajectory = sgd_trajectory(lambda p: inner(p, w), phi0, inner_lr=inner_lr, num_steps=num_steps,
                                differentiable=False).params
    if on_adapted is not None:
        on_adapted(dict(trajectory[-1]))
    v, loss = grad_and_value(outer)(trajectory[-1])
    # With one float α the products are taken at v and scaled by α (as the module docstring writes
    # them); with one α per tensor (Meta-SGD) the step's transposed Jacobian is I − H diag(α), so the
    # products are taken at u = α ⊙ v instead. Both cases run the same lines below.
    per_tensor = isinstance(inner_lr, Mapping)
    scale = 1.0 if per_tensor else inner_lr
    w_grad = torch.zeros_like(w)
    first = num_steps - (truncate if mode == "truncated" else num_steps)
    for k in reversed(range(first, num_steps)):
        u = {n: inner_lr[n] * v[n] for n in v} if per_tensor else v
        if mode != "first_order" and (with_params or k > first):
            hv_phi, hv_w = _step_products(inner, trajectory[k], w, u, forward_mode=mode == "forward_over_reverse")
            v = {n: v[n] - scale * hv_phi[n] for n in v}
        else:  # (∂²L_in/∂w∂φ) u = [∇ℓ_i(φ_k)·u]_i without H u: one forward-mode pass, no graph
            _, hv_w = jvp(per_example, (trajectory[k],), (u,))
        w_grad = w_grad - scale * hv_w
    return MetaGradient(loss.detach(), w_grad.detach(), {n: t.detach() for n, t in v.items()} if with_params else {})


def _step_products(
    inner: Callable[[Params, Tensor], Tensor], phi: Params, w: Tensor, v: Params, *, forward_mode: bool
) -> tuple[Params, Tensor]:
    """(H v, (∂²L_in/∂w∂φ) v) at φ: reverse over reverse, or forward (jvp) over reverse (grad)."""
    if forward_mode:
        grads = grad(inner, argnums=(0, 1))
        _, (hv_phi, hv_w) = jvp(lambda p: grads(p, w), (phi,), (v,))
        return hv_phi, hv_w
    with torch.enable_grad():
        p = {n: t.detach().requires_grad_() for n, t in phi.items()}
        w_ = w.detach().requires_grad_()
        g = torch.autograd.grad(inner(p, w_), list(p.values()), create_graph=True)
        dot = sum((gi * v[n]).sum() for gi, n in zip(g, p))
        *hv, hv_w = torch.autograd.grad(dot, [*p.values(), w_], allow_unused=True)
    hv_phi = {n: torch.zeros_like(p[n]) if h is None else h for n, h in zip(p, hv)}
    return hv_phi, torch.zeros_like(w) if hv_w is None else hv_w


def _unroll(model: nn.Module, loss_fn: PerExampleLoss, support: Any, outer: Callable[[Params], Tensor],
            phi0: Params, w: Tensor, inner_lr: float | Mapping[str, float], num_steps: int,
            with_params: bool, on_adapted: Callable[[Params], None] | None) -> MetaGradient:
    with torch.enable_grad():
        start = {n: t.clone().requires_grad_() for n, t in phi0.items()}
        w_ = w.clone().requires_grad_()
        adapted = inner_adapt(model, loss_fn, support, inner_lr=inner_lr, num_steps=num_steps, weights=w_,
                              backend="torch.func", params=start)
        if on_adapted is not None:
            on_adapted({n: t.detach() for n, t in adapted.params.items()})
        loss = outer(dict(adapted.params))
        if not loss.requires_grad:  # L_out is a constant (e.g. a verifier group with no signal): all zero
            return MetaGradient(loss.detach(), torch.zeros_like(w),
                                {n: torch.zeros_like(t) for n, t in phi0.items()} if with_params else {})
        *g_phi, g_w = torch.autograd.grad(loss, [*start.values(), w_] if with_params else [w_])
    return MetaGradient(loss.detach(), g_w, dict(zip(start, g_phi)))  # g_phi is empty without with_params


def check_meta_gradient_mode(mode: str, truncate: int | None, num_steps: int) -> None:
    """Raise ValueError unless ``mode`` is one of :data:`META_GRADIENT_MODES` and ``truncate`` fits it.

    ``truncate`` must be in 1..``num_steps`` for ``mode="truncated"`` and None for every other mode.
    """
    if mode not in META_GRADIENT_MODES:
        raise ValueError(f"mode must be one of {META_GRADIENT_MODES}; got {mode!r}.")
    if mode == "truncated":
        if isinstance(truncate, bool) or not (isinstance(truncate, int) and 1 <= truncate <= num_steps):
            raise ValueError(f"mode='truncated' needs truncate in 1..num_steps={num_steps}; got {truncate!r}.")
    elif truncate is not None:
        raise ValueError(f"truncate={truncate!r} only applies to mode='truncated'; got mode={mode!r}.")


def _check(weights: Tensor, inner_lr: float | Mapping[str, float], num_steps: int, params: Mapping[str, Tensor],
           mode: str, truncate: int | None) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1; got {num_steps!r}.")
    check_meta_gradient_mode(mode, truncate, num_steps)
    lrs = dict(inner_lr) if isinstance(inner_lr, Mapping) else {"inner_lr": inner_lr}
    for name, lr in lrs.items():
        if isinstance(lr, (bool, Tensor)) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"inner_lr must be a positive float or {{name: positive float}}; "
                             f"got {name}={lr!r}.")
    if isinstance(inner_lr, Mapping) and set(inner_lr) != set(params):
        raise ValueError(f"inner_lr as a mapping needs exactly the names of params; missing "
                         f"{sorted(set(params) - set(inner_lr))}, unexpected {sorted(set(inner_lr) - set(params))}.")
    if weights.ndim != 1:
        raise ValueError(f"weights must have shape [n], one per support example; got {tuple(weights.shape)}.")
    if not params:
        raise ValueError("params is empty; pass the tensors to adapt, e.g. lora_parameters(model).")
