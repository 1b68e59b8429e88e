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

Non-finite numbers are stopped, not returned: a NaN, infinite or non-positive learning rate
(:func:`check_inner_lr`) and NaN or infinite weights (:func:`check_weights`) raise ``ValueError``
before any work; a diverging loop raises :class:`NonFiniteError` naming the step where the loss or
the parameters went non-finite (checked once after the last step, one host sync per call, see
:func:`check_finite_trajectory`). Inside ``torch.func.vmap`` values cannot steer Python, so the
checks are skipped there; vmapped callers check their outputs (e.g. the toy's ``adapt_and_predict``).

Introduced in notebooks/01_maml_sine.ipynb.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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


class NonFiniteError(FloatingPointError):
    """An inner loop went non-finite (NaN or ±inf).

    Attributes:
        step: the inner step k (0-based) at which it happened: the loss L_in(φ_k) it descended, or
            the parameters φ_{k+1} it produced, was the first non-finite value; None if unknown.
        what: which value: ``"loss"``, ``"parameters"`` or ``"start"`` (φ_0 itself), or a caller's word.
    """

    def __init__(self, message: str, *, step: int | None = None, what: str = "") -> None:
        super().__init__(message)
        self.step, self.what = step, what


def _truth(flag: Tensor) -> bool | None:
    """``bool(flag)``, or None inside ``torch.func.vmap`` (batched values cannot steer Python; grad/jvp allow it)."""
    try:
        return bool(flag)
    except RuntimeError as error:
        if "vmap" in str(error):
            return None
        raise


def tensor_is_inspectable(tensor: Tensor) -> bool:
    """Whether Python may branch on ``tensor``'s values: False inside ``torch.func.vmap``, where checks are skipped."""
    return _truth(tensor.reshape(-1)[:1].sum() == 0) is not None  # one element: cheap


def check_weights(weights: Tensor | None) -> None:
    """Reject NaN or infinite example weights (before any work), naming them; skipped inside ``vmap``."""
    finite = None if weights is None else torch.isfinite(weights.detach())
    if finite is not None and _truth(finite.all()) is False:
        bad = (~finite).nonzero().reshape(-1).tolist()
        raise ValueError(f"weights must be finite; entries {bad[:10]} are {weights.detach()[~finite][:10].tolist()}. "
                         "Check what computed them (a scorer that diverged, a division by zero).")


def check_inner_lr(inner_lr: float | Tensor, what: str = "inner_lr") -> None:
    """Reject a learning rate that is not a finite positive number (every entry, for a tensor); skipped inside vmap."""
    if isinstance(inner_lr, Tensor):
        lr = inner_lr.detach()
        if _truth((torch.isfinite(lr) & (lr > 0)).all()) is False:
            raise ValueError(f"{what} must be finite and positive; got a tensor with values {lr.tolist()}.")
        return
    if isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float)):
        raise ValueError(f"{what} must be a float, a tensor or a {{name: lr}} mapping; got {inner_lr!r}.")
    if not (math.isfinite(inner_lr) and inner_lr > 0):
        raise ValueError(f"{what} must be finite and positive; got {inner_lr!r}. Use a step size such as 0.01.")


def check_finite_trajectory(losses: Sequence[Tensor], final: Mapping[str, Tensor], *,
                            locate: Callable[[], NonFiniteError]) -> None:
    """Raise ``locate()`` unless every loss and every final parameter is finite: one host sync.

    Why this suffices for SGD: once an entry of φ is NaN or ±inf, every later step keeps it
    non-finite (x − α·g with α > 0 finite: ∞ − finite = ∞, ∞ − ∞ = NaN, NaN stays NaN), and a
    non-finite gradient makes the next φ non-finite the same way. So a finite φ_K and finite losses
    L_in(φ_0..φ_{K−1}) mean that no loss, gradient or parameter of the loop was ever non-finite.
    Each tensor is reduced by one ``sum`` (in at least float32), which is non-finite exactly when an
    entry is, or when finite entries add up past the float range (|Σ| > 3e38: diverged as well); then
    one ``isfinite`` over the stacked sums and one sync. Skipped (returns) inside ``vmap``.
    """
    sums = [loss.detach() for loss in losses]
    sums += [p.detach().sum(dtype=torch.promote_types(p.dtype, torch.float32)) for p in final.values()]
    if not sums:
        return
    if _truth(torch.isfinite(torch.stack(sums)).all()) is False:  # None inside vmap: no check there
        raise locate()


def first_non_finite(params: Sequence[Params], losses: Sequence[Tensor], inner_lr: object) -> NonFiniteError:
    """The error naming the first non-finite value of φ_0..φ_K and their K losses (failure path: syncs per step)."""
    hint = (f"The inner loop diverged: lower inner_lr (now {_describe_lr(inner_lr)}) or the number of steps, "
            "or check the data and weights.")
    bad_start = [name for name, p in params[0].items() if not bool(torch.isfinite(p.detach()).all())]
    if bad_start:
        return NonFiniteError(f"the starting parameters φ_0 are non-finite ({', '.join(bad_start[:5])}) "
                              "before any inner step.", step=0, what="start")
    for k, loss in enumerate(losses):
        if not bool(torch.isfinite(loss).all()):
            return NonFiniteError(f"inner step {k}: the inner loss L_in(φ_{k}) is {loss.item()}. {hint}",
                                  step=k, what="loss")
        bad = [name for name, p in params[k + 1].items() if not bool(torch.isfinite(p.detach()).all())]
        if bad:
            return NonFiniteError(f"inner step {k}: the parameters φ_{k + 1} went non-finite ({', '.join(bad[:5])}) "
                                  f"though the loss was {loss.item():.4g} (the gradient or α·∇ overflowed). {hint}",
                                  step=k, what="parameters")
    return NonFiniteError(f"the inner loop's parameters grew past the float range (their sum overflowed). {hint}",
                          step=len(losses) - 1 if losses else None, what="parameters")


def _describe_lr(inner_lr: object) -> str:
    if isinstance(inner_lr, Mapping):
        values = {_describe_lr(v) for v in inner_lr.values()}
        return next(iter(values)) if len(values) == 1 else f"per tensor, {sorted(values)[:4]}"
    return f"{inner_lr.detach().reshape(-1)[:4].tolist()}" if isinstance(inner_lr, Tensor) else repr(inner_lr)


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
        inner_lr: α: a float, a scalar tensor, or ``{name: lr}`` with an entry for every name of ``start``;
            every value finite and positive (:func:`check_inner_lr`, checked before any step).
        num_steps: K ≥ 0.
        differentiable: True keeps the autograd graph, so φ_K is a function of φ_0, α and whatever
            ``inner_loss`` closes over (the weights w): ``torch.func.grad`` nests inside autograd.
            False detaches every φ_k: constants, as for a test-time update or the stored
            trajectory of the checkpointed meta-gradient modes (no graph is kept, only K + 1 states).
        first_order: with ``differentiable``, treat the inner gradients as constants (FOMAML):
            φ_K still depends on φ_0 and α, but no longer on w.

    Returns:
        :class:`Trajectory` with φ_0..φ_K and the K losses.

    Raises:
        ValueError: an ``inner_lr`` value that is NaN, infinite or not positive.
        NonFiniteError: the loop went non-finite, naming the step k and whether the loss L_in(φ_k)
            or the parameters φ_{k+1} did first. Checked once after the last step
            (:func:`check_finite_trajectory`: one host sync per call, none per step); skipped
            inside ``torch.func.vmap``, where the caller must check its outputs.
    """
    lrs = inner_lr if isinstance(inner_lr, Mapping) else {name: inner_lr for name in start}
    for name, lr in lrs.items():
        check_inner_lr(lr, f"inner_lr[{name!r}]" if isinstance(inner_lr, Mapping) else "inner_lr")
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
    check_finite_trajectory(losses, phi, locate=lambda: first_non_finite(params, losses, inner_lr))
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
        ValueError: bad ``inner_lr`` (also NaN or infinite), ``num_steps``, ``weights`` (shape, NaN or
            infinite entries), ``backend`` or ``params``.
        NonFiniteError: the inner loop diverged (names the step); not checked inside ``vmap``.

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
    check_weights(weights)
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
            check_inner_lr(lr, f"inner_lr[{name!r}]")
        return {name: inner_lr[name] for name in params}
    check_inner_lr(inner_lr, "inner_lr")
    return {name: inner_lr for name in params}

