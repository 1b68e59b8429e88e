"""The clipped GRPO update of a causal LM's LoRA tensors, micro-batched: the generator's and Solver GRPO's step.

Given n sampled sequences with advantages A_j (group-normalised rewards) and log π_φ(y_j) (a mean token
log-probability, :func:`~mass_ref.lm.mass.completion_logprobs`), one epoch minimises

    L(φ) = L_clip(φ) + L_extra(φ),     L_clip = (1/n) Σ_j −min(ρ_j A_j, clip(ρ_j, 1 ± ε) A_j),
    ρ_j = exp(log π_φ(y_j) − log π_old(y_j))

(:func:`mass_ref.grpo.clipped_policy_loss`) with one optimiser step on the LoRA tensors; ``ppo_epochs``
epochs reuse the same samples, π_old being the policy that sampled them (φ before the first epoch).
L_extra is an optional extra loss backpropagated once per epoch (MASS's γ·L_solve).

The sequences run ``micro_batch_size`` at a time: chunk C contributes (|C| / n) · L_clip(C), a forward
and a backward of its own, so Σ_C = L_clip over all n and the summed gradient is the full batch's, while
only one chunk's activations are alive (:mod:`mass_ref.lm.memory`). π_old is each chunk's own
first-epoch log π (detached): no separate forward pass. A chunk whose advantages are all 0 (no verifier
signal, or equal attributions) adds exactly 0 to the loss and to every gradient, so it is not run at all;
the optimiser still steps every epoch (on L_extra alone, or on a zero gradient).

Introduced in notebooks/05_mass_llm.ipynb; the memory of a chunk is chapter 7's (:mod:`mass_ref.lm.memory`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mass_ref.grpo import clipped_policy_loss
from mass_ref.lm.memory import layer_checkpointing
from mass_ref.lm.models import lora_parameters

__all__ = ["GradientAverager", "clipped_policy_update"]

GradientAverager = Callable[[Sequence[Tensor]], None]
"""Averages the ``.grad`` of the given tensors over data-parallel ranks, in place."""


def clipped_policy_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    logp_fn: Callable[[slice], Tensor],
    advantages: Tensor,
    *,
    ppo_epochs: int,
    clip_eps: float,
    micro_batch_size: int | None = None,
    gradient_checkpointing: bool = False,
    extra_loss: Callable[[], Tensor] | None = None,
    average_gradients: GradientAverager | None = None,
) -> float:
    """``ppo_epochs`` clipped GRPO updates of ``model``'s LoRA tensors; returns the last epoch's surrogate L_clip.

    Args:
        model: a peft model; only its LoRA tensors (:func:`~mass_ref.lm.models.lora_parameters`) get gradients.
        optimizer: steps those tensors (``ppo_epochs`` times).
        logp_fn: ``logp_fn(s)`` = log π_φ of the sequences ``s`` (a slice of the n), shape ``[len(s)]``,
            computed with the model's current φ.
        advantages: A_j, shape ``[n]``.
        ppo_epochs: updates on the same samples (1: plain policy gradient, the ratio is 1).
        clip_eps: PPO's ε.
        micro_batch_size: sequences per forward/backward; None: all n at once.
        gradient_checkpointing: recompute the transformer's layers in the backward
            (:func:`~mass_ref.lm.memory.layer_checkpointing`).
        extra_loss: L_extra, a scalar of φ recomputed each epoch (None: none).
        average_gradients: data parallel: averages the ``.grad`` over ranks before every optimiser step.

    Raises:
        ValueError: ``advantages`` is not 1-D, or a size or ε is out of range (checked before any work).
    """
    if advantages.dim() != 1:
        raise ValueError(f"advantages must be 1-D (one per sequence); got shape {tuple(advantages.shape)}.")
    if isinstance(ppo_epochs, bool) or not isinstance(ppo_epochs, int) or ppo_epochs < 1:
        raise ValueError(f"ppo_epochs must be an integer >= 1; got {ppo_epochs!r}.")
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be positive; got {clip_eps!r}.")
    size = micro_batch_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"micro_batch_size must be None (one pass) or an integer >= 1; got {size!r}.")
    params = list(lora_parameters(model).values())
    n = advantages.shape[0]
    size = size or n
    chunks = [slice(start, min(start + size, n)) for start in range(0, n, size)]
    chunks = [chunk for chunk in chunks if bool(advantages[chunk].any())]  # skipping a zero chunk is exact
    logp_old: list[Tensor] = []
    value = 0.0
    for epoch in range(ppo_epochs):
        grads = [torch.zeros_like(p) for p in params]
        value = 0.0
        with layer_checkpointing(model, gradient_checkpointing):
            for i, chunk in enumerate(chunks):
                logp = logp_fn(chunk)
                if epoch == 0:  # the policy that sampled: π_old = π_φ before any update, no separate forward pass
                    logp_old.append(logp.detach())
                loss = clipped_policy_loss(logp, logp_old[i], advantages[chunk], clip_eps) * (len(logp) / n)
                value += loss.item()
                grads = [t + g for t, g in zip(grads, torch.autograd.grad(loss, params))]  # φ only, not the base
            if extra_loss is not None:
                grads = [t + g for t, g in zip(grads, torch.autograd.grad(extra_loss(), params))]
        for p, g in zip(params, grads):
            p.grad = g
        if average_gradients is not None:
            average_gradients(params)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return value
