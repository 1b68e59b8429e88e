"""The inner loop: a few steps of weighted SGD, differentiable or not. The course's one kernel.

:func:`sgd_trajectory` is the kernel: it runs ``num_steps`` of

    θ_{t+1} = θ_t − α ⊙ ∇_θ L_in(θ_t),     L_in(θ) = Σ_i w_i ℓ_i(θ)       (uniform w_i = 1/n by default)

on a dict of parameter tensors and returns the whole trajectory φ_0..φ_K. Every K-step update in
the package calls it: :func:`inner_adapt` (this module's model-level API), the meta-gradient modes
of :mod:`mass_ref.metagrad` (which keep only the trajectory and run the reverse pass themselves),
and the LM's test-time update (:func:`mass_ref.lm.ttt.lora_sft_steps`, SGD). The one independent
implementation is the ``higher`` backend below, kept on purpose as the cross-check.

:func:`inner_adapt` returns the adapted parameters θ_K as ordinary tensors that are still attached
to the autograd graph. An outer loss computed with them can therefore be differentiated with respect to

* the initial parameters θ_0 (MAML's meta-gradient),
* the inner learning rate α (a float, a scalar tensor, or one tensor per parameter: Meta-SGD),
* the per-example weights w (data attribution; MASS's scorer outputs s_i).

Two interchangeable backends compute the same numbers:

* ``"higher"`` (the design choice for plain ``nn.Module`` models): ``higher.monkeypatch`` plus a
  differentiable SGD optimiser. It cannot patch peft-wrapped or Llama-family models; asking for it
  there fails before any work with a message that names ``"torch.func"``.
* ``"torch.func"``: :func:`sgd_trajectory` (``torch.func.grad`` over ``torch.func.functional_call``)
  on any subset of the parameters (for example only the LoRA tensors). It composes with
  ``torch.func.vmap``, so a batch of tasks can be adapted in one call.

Introduced in notebooks/01_maml_sine.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

Forward = Callable[..., Any]
"""A callable that runs the model: ``forward(*inputs) -> outputs``."""

PerExampleLoss = Callable[[Forward, Any], Tensor]
"""``loss_fn(forward, batch) -> Tensor[n]``: one loss per example of ``batch``."""

LearningRate = Union[float, Tensor, Mapping[str, Union[float, Tensor]]]

Params = dict[str, Tensor]
"""Parameter tensors by name, e.g. ``{"lin.weight": Tensor[out, in], ...}`` or a model's LoRA tensors."""

BACKENDS = ("higher", "torch.func")


@dataclass
class AdaptedModel:
    """A model together with adapted values for some of its parameters.

    Calling it runs ``module`` functionally with ``params`` in place of the module's own tensors
    (``torch.func.functional_call``); parameters not in ``params`` keep their module values.

    Attributes:
        module: the original ``nn.Module`` (never modified).
        params: ``{name: tensor}``, the adapted parameters θ_K, differentiable with respect to
            whatever they were computed from (θ_0, α, w).
    """

    module: nn.Module
    params: dict[str, Tensor]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.module, self.params, args, kwargs, strict=False)


def weighted_inner_loss(losses: Tensor, weights: Tensor | None) -> Tensor:
    """L_in = Σ_i w_i ℓ_i, or the mean of ``losses`` when ``weights`` is None.

    Args:
        losses: per-example losses ℓ_i, shape ``[n]``.
        weights: per-example weights w_i, shape ``[n]``, or None for uniform 1/n.
    """
    if losses.ndim != 1:
        raise ValueError(
            f"loss_fn must return one loss per example, shape [n]; got shape {tuple(losses.shape)}. "
            "Reduce over everything except the example dimension (e.g. .mean(-1)), not over examples."
        )
    if weights is None:
        return losses.mean()
    if weights.shape != losses.shape:
        raise ValueError(
            f"weights has shape {tuple(weights.shape)} but loss_fn returned {losses.shape[0]} "
            f"per-example losses; pass one weight per example, shape ({losses.shape[0]},)."
        )
    return (weights * losses).sum()


@dataclass
class Trajectory:
    """The states of K inner steps.

    Attributes:
        params: φ_0, ..., φ_K (K + 1 dicts shaped like the start).
        losses: L_in(φ_0), ..., L_in(φ_{K−1}), the loss each step descended (K scalars, detached).
    """

    params: list[Params]
    losses: list[Tensor]


def sgd_trajectory(
    inner_loss: Callable[[Params], Tensor],
    start: Mapping[str, Tensor],
    *,
    inner_lr: float | Tensor | Mapping[str, float | Tensor],
    num_steps: int,
    differentiable: bool = True,
    first_order: bool = False,
) -> Trajectory:
    """K steps of SGD, φ_{k+1} = φ_k − α ⊙ ∇_φ L_in(φ_k) for k = 0..K−1: the one inner-loop kernel.

    Args:
        inner_loss: φ ↦ L_in(φ), a scalar; see :func:`inner_loss_of` for Σ_i w_i ℓ_i(φ) of a model.
        start: φ_0, ``{name: tensor}``.
        inner_lr: α: a float, a scalar tensor, or ``{name: lr}`` with an entry for every name of ``start``.
            No checks here; the public callers validate it.
        num_steps: K ≥ 0.
        differentiable: True keeps the autograd graph, so φ_K is a function of φ_0, α and whatever
            ``inner_loss`` closes over (the weights w): ``torch.func.grad`` nests inside autograd.
            False detaches every φ_k: constants, as for a test-time update or the stored
            trajectory of the checkpointed meta-gradient modes (no graph is kept, only K + 1 states).
        first_order: with ``differentiable``, treat the inner gradients as constants (FOMAML):
            φ_K still depends on φ_0 and α, but no longer on w.

    Returns:
        :class:`Trajectory` with φ_0..φ_K and the K losses.
    """
    lrs = inner_lr if isinstance(inner_lr, Mapping) else {name: inner_lr for name in start}
    phi = dict(start) if differentiable else {name: t.detach() for name, t in start.items()}
    grad_and_loss = torch.func.grad_and_value(inner_loss)
    params, losses = [phi], []
    for _ in range(num_steps):
        grads, loss = grad_and_loss(phi)
        if first_order:
            grads = {name: g.detach() for name, g in grads.items()}
        phi = {name: p - lrs[name] * grads[name] for name, p in phi.items()}
        if not differentiable:  # constants: nothing (not even a tensor α) keeps a graph to φ_{k+1}
            phi = {name: p.detach() for name, p in phi.items()}
        params.append(phi)
        losses.append(loss.detach())
    return Trajectory(params, losses)


def inner_loss_of(model: nn.Module, loss_fn: PerExampleLoss, batch: Any,
                  weights: Tensor | None = None) -> Callable[[Params], Tensor]:
    """φ ↦ L_in(φ) = Σ_i w_i ℓ_i(φ) (the mean without ``weights``), ``model`` run with φ substituted.

    ℓ_i comes from ``loss_fn(forward, batch) -> Tensor[n]``; parameters of ``model`` missing from φ keep
    their module values (``torch.func.functional_call``, ``strict=False``).
    """

    def inner_loss(params: Params) -> Tensor:
        return weighted_inner_loss(loss_fn(partial(_functional_forward, model, params), batch), weights)

    return inner_loss


def inner_adapt(
    model: nn.Module,
    loss_fn: PerExampleLoss,
    batch: Any,
    *,
    inner_lr: LearningRate,
    num_steps: int = 1,
    weights: Tensor | None = None,
    first_order: bool = False,
    backend: str = "higher",
    params: Mapping[str, Tensor] | None = None,
) -> AdaptedModel:
    """Adapt ``model`` to ``batch`` with ``num_steps`` of differentiable (weighted) SGD.

    Implements θ_{t+1} = θ_t − α ⊙ ∇_θ Σ_i w_i ℓ_i(θ_t) for t = 0..K−1 and returns θ_K.

    Args:
        model: the learner; it is not modified.
        loss_fn: ``loss_fn(forward, batch) -> Tensor[n]``, per-example losses ℓ_i, where
            ``forward`` runs the model with the current inner-loop parameters.
        batch: anything ``loss_fn`` understands (e.g. a tuple ``(x, y)``).
        inner_lr: α > 0. A float, a (possibly learnable) tensor, or ``{name: lr}`` with one entry
            per adapted parameter (Meta-SGD). Tensors may require grad.
        num_steps: K ≥ 1 inner steps.
        weights: per-example weights w, shape ``[n]``; may require grad (attribution). None means
            the plain mean loss (w_i = 1/n).
        first_order: drop second-order terms (FOMAML): inner gradients are treated as
            constants, so θ_K still depends on θ_0 and α, but no longer on ``weights``.
        backend: ``"higher"`` (plain modules) or ``"torch.func"`` (any module, vmap-able).
        params: the initial values θ_0 of the parameters to adapt, ``{name: tensor}``; names must
            be parameter names of ``model``. Default: every parameter with ``requires_grad``.

    Returns:
        :class:`AdaptedModel` whose ``params`` hold θ_K for the adapted names.

    Raises:
        ValueError: bad ``inner_lr``, ``num_steps``, ``weights`` shape, ``backend`` or ``params``.

    Introduced in notebooks/01_maml_sine.ipynb.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}.")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1; got {num_steps!r}.")
    start = _initial_params(model, params)
    lrs = _per_param_lr(inner_lr, start)
    if weights is not None and weights.ndim != 1:
        raise ValueError(
            f"weights must be a vector with one weight per example, shape [n]; got shape "
            f"{tuple(weights.shape)}."
        )
    if backend == "higher":
        from mass_ref._higher_backend import higher_inner_loop

        adapted = higher_inner_loop(model, loss_fn, batch, start, lrs, weights, num_steps, first_order)
    else:
        trajectory = sgd_trajectory(inner_loss_of(model, loss_fn, batch, weights), start, inner_lr=lrs,
                                    num_steps=num_steps, first_order=first_order)
        adapted = trajectory.params[-1]
    return AdaptedModel(model, adapted)


def _functional_forward(model: nn.Module, params: dict[str, Tensor], *args: Any, **kwargs: Any) -> Any:
    return functional_call(model, params, args, kwargs, strict=False)


def _initial_params(model: nn.Module, params: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    named = dict(model.named_parameters())
    if params is None:
        start = {name: p for name, p in named.items() if p.requires_grad}
        if not start:
            raise ValueError(
                "model has no parameter with requires_grad=True; pass params={name: tensor} to say "
                "which parameters to adapt."
            )
        return start
    unknown = sorted(set(params) - set(named))
    if unknown:
        raise ValueError(
            f"params names {unknown} are not parameters of the model; valid names look like "
            f"{list(named)[:3]} (see model.named_parameters())."
        )
    if not params:
        raise ValueError("params is empty; pass at least one {name: tensor} to adapt, or None for all.")
    return dict(params)


def _per_param_lr(inner_lr: LearningRate, params: dict[str, Tensor]) -> dict[str, float | Tensor]:
    if isinstance(inner_lr, Mapping):
        missing = sorted(set(params) - set(inner_lr))
        extra = sorted(set(inner_lr) - set(params))
        if missing or extra:
            raise ValueError(
                f"inner_lr as a mapping needs exactly one entry per adapted parameter; missing "
                f"{missing}, unexpected {extra}."
            )
        for name, lr in inner_lr.items():
            _check_positive(lr, f"inner_lr[{name!r}]")
        return {name: inner_lr[name] for name in params}
    _check_positive(inner_lr, "inner_lr")
    return {name: inner_lr for name in params}


def _check_positive(lr: float | Tensor, what: str) -> None:
    if isinstance(lr, Tensor):
        try:
            bad = bool((lr <= 0).any())
        except RuntimeError:  # value hidden inside a torch.func transform: cannot be inspected
            return
        if bad:
            raise ValueError(f"{what} must be positive; got a tensor with values {lr.detach().tolist()}.")
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ValueError(f"{what} must be a float, a tensor or a {{name: lr}} mapping; got {lr!r}.")
    if not lr > 0:
        raise ValueError(f"{what} must be positive; got {lr!r}. Use a step size such as 0.01.")
