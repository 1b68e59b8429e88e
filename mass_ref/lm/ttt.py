"""Test-time training (TTT): adapt the LoRA tensors to a few examples, answer, discard the adapter.

For one target problem with m practice examples (p_i, a_i) and weights w_i (default 1/m), TTT
takes ``num_steps`` plain (first-order, non-differentiable) optimiser steps on the LoRA tensors φ only:

    L(φ) = Σ_i w_i ℓ_i(φ),     ℓ_i = mean token cross-entropy of a_i + eos given p_i
                                      (:func:`~mass_ref.lm.sft.sft_losses_per_example`)
    SGD:  φ ← φ − α ∇_φ L(φ)        (:func:`mass_ref.inner.sgd_trajectory`, the package's one
                                     inner-loop kernel, without a graph; then written into φ)
    Adam: φ ← φ − α m̂ / (√v̂ + ε)   (fresh moments per problem; the first step moves each
                                     weight by ≈ α · sign(g), which is why LoRA's B = 0 start
                                     needs an aggressive α ≈ 1e-2 for 1–2 steps)

then answers with the adapted model and restores φ bit for bit. The base weights are never
touched (gradients are taken w.r.t. φ only), and nothing is left
behind: the optimiser lives inside the call and every ``.grad`` is put back as it was.

The API is a context manager, because "adapted while answering, original afterwards" is a scope::

    with adapted_lora(model, tokenizer, examples, num_steps=1, lr=1e-2) as losses:
        answers = generate_answers(model, tokenizer, [prompt], max_new_tokens=32)
    # here the LoRA tensors are exactly what they were before the ``with``

:func:`lora_sft_steps` is the in-place primitive (no restore) and :func:`ttt_accuracy` the loop
over problems behind the Base / Base TTT (random other problems) / TT-SS (self-generated
examples) comparisons. The model stays in eval mode throughout (no dropout: steps are
deterministic). This is the inference-time update; the differentiable one used for
meta-gradients is :func:`mass_ref.lm.models.inner_adapt_lora`.

Introduced in notebooks/04_lm_test_time_training.ipynb.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from mass_ref.inner import (NonFiniteError, check_finite_trajectory, check_inner_lr, check_weights, inner_loss_of,
                            sgd_trajectory, weighted_inner_loss)
from mass_ref.lm.generate import default_gold, eval_mode, generate_answers
from mass_ref.lm.models import lora_parameters
from mass_ref.lm.sft import SFTBatch, sft_batch, sft_losses_per_example
from mass_ref.tasks.verify import is_correct
from mass_ref.progress import progress_bar

Problem = TypeVar("Problem")
Example = tuple[str, str]
"""A practice example ``(prompt, answer)``; the answer is supervised, followed by eos."""

OPTIMIZERS = ("adam", "sgd")

__all__ = ["OPTIMIZERS", "adapted_lora", "lora_sft_steps", "lora_sft_steps_on_batch", "restored_lora", "ttt_accuracy"]


def lora_sft_steps(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    num_steps: int,
    lr: float,
    optimizer: str = "adam",
    weights: Sequence[float] | Tensor | None = None,
    add_bos: bool = False,
) -> list[float]:
    """Train the LoRA tensors of ``model`` **in place** with ``num_steps`` weighted SFT steps (no restore).

    Args:
        model: a peft model (see :func:`~mass_ref.lm.models.add_lora`); only its LoRA tensors move.
        tokenizer: its tokenizer.
        examples: m ``(prompt, answer)`` pairs, one right-padded batch (all m in every step).
        num_steps: number of optimiser steps (0 does nothing).
        lr: the step size α > 0.
        optimizer: ``"adam"`` (torch defaults β = (0.9, 0.999), ε = 1e-8) or ``"sgd"`` (plain).
        weights: m weights w_i, or None for w_i = 1/m. A zero weight removes an example's gradient.
        add_bos: prepend bos to every prompt (see :func:`~mass_ref.lm.sft.sft_batch`).

    Returns:
        The weighted loss L(φ_t) before each step t (``num_steps`` floats).

    Raises:
        ValueError: a bad ``optimizer``, ``num_steps``, ``lr`` (also NaN or infinite) or ``weights``
            (wrong shape, NaN or infinite entries), before any work.
        ~mass_ref.inner.NonFiniteError: the steps diverged (names the step); φ is then left as it
            was before the call (SGD) or at the last step (Adam; :func:`adapted_lora` restores it).

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    _check_step_args(optimizer, num_steps, lr)
    if num_steps == 0 or not examples:
        return []
    device = next(iter(_lora_or_raise(model).values())).device
    batch = sft_batch(tokenizer, list(examples), add_bos=add_bos).to(device)
    return lora_sft_steps_on_batch(model, batch, num_steps=num_steps, lr=lr, optimizer=optimizer, weights=weights)


def lora_sft_steps_on_batch(
    model: nn.Module,
    batch: SFTBatch,
    *,
    num_steps: int,
    lr: float,
    optimizer: str = "adam",
    weights: Sequence[float] | Tensor | None = None,
) -> list[float]:
    """:func:`lora_sft_steps` on an already built :class:`~mass_ref.lm.sft.SFTBatch` (same update, in place).

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    _check_step_args(optimizer, num_steps, lr)
    lora = _lora_or_raise(model)
    params = list(lora.values())
    batch = batch.to(params[0].device)
    w = _weights(weights, len(batch), params[0].device, params[0].dtype)
    if optimizer == "sgd":  # the package's one inner-loop kernel, without a graph, written back in place
        with eval_mode(model):  # no dropout (LoRA or base): the steps are deterministic
            trajectory = sgd_trajectory(inner_loss_of(model, sft_losses_per_example, batch, w), lora, inner_lr=lr,
                                        num_steps=num_steps, differentiable=False)
        with torch.no_grad():
            for name, p in lora.items():
                p.copy_(trajectory.params[-1][name])
        return [loss.item() for loss in trajectory.losses]
    opt = torch.optim.Adam(params, lr=lr)  # Adam keeps moments: not the SGD kernel
    saved_grads = [p.grad for p in params]
    losses = []
    try:
        with eval_mode(model):
            for _ in range(num_steps):
                loss = weighted_inner_loss(sft_losses_per_example(model, batch), w)
                grads = torch.autograd.grad(loss, params)  # w.r.t. φ only: base weights get no .grad
                for p, g in zip(params, grads):
                    p.grad = g
                opt.step()
                losses.append(loss.item())  # Adam's loop always synced here, so this loss check costs nothing
                if not math.isfinite(losses[-1]):
                    raise NonFiniteError(f"test-time Adam step {len(losses) - 1}: the loss is {losses[-1]}; lower "
                                         f"lr (now {lr!r}).", step=len(losses) - 1, what="loss")
        check_finite_trajectory([], lora, locate=lambda: NonFiniteError(
            f"test-time Adam: the LoRA tensors went non-finite within {num_steps} steps though every loss was "
            f"finite; lower lr (now {lr!r}).", step=None, what="parameters"))
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
    return losses


@contextlib.contextmanager
def restored_lora(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Yield the LoRA tensors; on exit (also on an exception) restore them bit for bit from a copy.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    lora = _lora_or_raise(model)
    with torch.no_grad():
        snapshot = {name: p.detach().clone() for name, p in lora.items()}
    try:
        yield lora
    finally:
        with torch.no_grad():
            for name, p in lora.items():
                p.copy_(snapshot[name])


@contextlib.contextmanager
def adapted_lora(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    num_steps: int,
    lr: float,
    optimizer: str = "adam",
    weights: Sequence[float] | Tensor | None = None,
    add_bos: bool = False,
) -> Iterator[list[float]]:
    """Within the ``with`` block the LoRA tensors are adapted by :func:`lora_sft_steps`; on exit
    (also on an exception) they are restored bit for bit from a copy taken on entry.

    Yields:
        The weighted training loss before each step (``num_steps`` floats; empty when ``num_steps == 0``
        or ``examples`` is empty, in which case the model is simply not adapted).

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    with restored_lora(model):
        yield lora_sft_steps(model, tokenizer, examples, num_steps=num_steps, lr=lr, optimizer=optimizer,
                             weights=weights, add_bos=add_bos)


def ttt_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    examples_for: Callable[[Problem], Sequence[Example]],
    *,
    num_steps: int,
    lr: float,
    prompt_fn: Callable[[Problem], str],
    max_new_tokens: int,
    optimizer: str = "adam",
    weights_for: Callable[[Problem, Sequence[Example]], Sequence[float] | Tensor] | None = None,
    gold_fn: Callable[[Problem], str | int | float] = default_gold,
    add_bos: bool = False,
    progress: bool = False,
) -> tuple[float, list[bool]]:
    """Accuracy with per-problem test-time training: for each problem T,

        examples = examples_for(T);  adapt φ on them;  answer prompt_fn(T) greedily;  restore φ

    ``examples_for`` decides the method: ``lambda T: []`` is Base, random other training problems
    is Base TTT, the model's own generated problems is TT-SS. ``weights_for(T, examples)`` gives
    the per-example weights (a scorer's s_i); None means uniform 1/m.

    Returns:
        ``(acc, per_problem)`` as in :func:`~mass_ref.lm.generate.accuracy`.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    correct = []
    iterator: Sequence[Problem] = problems
    if progress:
        iterator = progress_bar(problems, desc="test-time training")
    for problem in iterator:
        examples = list(examples_for(problem))
        weights = weights_for(problem, examples) if weights_for is not None and examples else None
        with adapted_lora(model, tokenizer, examples, num_steps=num_steps, lr=lr, optimizer=optimizer,
                          weights=weights, add_bos=add_bos):
            (answer,) = generate_answers(model, tokenizer, [prompt_fn(problem)],
                                         max_new_tokens=max_new_tokens, add_bos=add_bos)
        correct.append(is_correct(answer, gold_fn(problem)))
    return (sum(correct) / len(correct) if correct else 0.0), correct


def _check_step_args(optimizer: str, num_steps: int, lr: float) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {optimizer!r}.")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be an integer >= 0; got {num_steps!r}.")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be finite and positive; got {lr!r}. Test-time LoRA typically needs about 1e-2.")
    check_inner_lr(lr, "lr")


def _lora_or_raise(model: nn.Module) -> dict[str, Tensor]:
    lora = lora_parameters(model)
    if not lora:
        raise ValueError("the model has no trainable LoRA tensors; wrap it with add_lora(model) first.")
    return lora


def _weights(
    weights: Sequence[float] | Tensor | None, m: int, device: torch.device, dtype: torch.dtype
) -> Tensor | None:
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=dtype, device=device).detach()
    if w.shape != (m,):
        raise ValueError(f"weights must have one entry per example, shape ({m},); got shape {tuple(w.shape)}.")
    check_weights(w)
    return w
