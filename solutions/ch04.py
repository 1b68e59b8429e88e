"""Solutions to the exercises of notebooks/04_lm_test_time_training.ipynb (checked by tests/test_solutions_ch04.py)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mass_ref.lm import SFTBatch, lora_parameters, sft_losses_per_example


def answer_token_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Exercise 1: mean next-token cross-entropy over each row's supervised positions, ``[n, T, V], [n, T] → [n]``.

    The logits at position t−1 predict the label at t, so both are shifted by one before comparing.
    """
    targets = labels[:, 1:]
    supervised = targets != ignore_index
    log_probs = logits[:, :-1].log_softmax(-1)
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # any valid id where ignored
    return -(picked * supervised).sum(-1) / supervised.sum(-1)


def one_step_attributions(model: nn.Module, batch: SFTBatch, gold: SFTBatch, lr: float, weights: Tensor) -> Tensor:
    """Exercise 2: g_i = ∂ L_outer(φ') / ∂ w_i for one SGD step φ' = φ − α Σ_i w_i ∇ℓ_i(φ), without a second derivative.

    Since ∇ℓ_i(φ) does not depend on w, ∂φ'/∂w_i = −α ∇ℓ_i(φ) and g_i = −α ⟨∇_φ L_outer(φ'), ∇_φ ℓ_i(φ)⟩.
    L_outer is the summed SFT loss of ``gold`` (one gold solution: its loss).
    """
    lora = lora_parameters(model)
    names, params = list(lora), list(lora.values())
    losses = sft_losses_per_example(model, batch)
    per_example = [torch.autograd.grad(losses[i], params, retain_graph=True) for i in range(len(batch))]  # ∇ℓ_i(φ)
    with torch.no_grad():
        steps = [sum(w * g[k] for w, g in zip(weights, per_example)) for k in range(len(params))]  # Σ_i w_i ∇ℓ_i
    adapted = {n: (p - lr * s).detach().requires_grad_() for n, p, s in zip(names, params, steps)}  # φ', a leaf
    forward = lambda **kwargs: functional_call(model, adapted, (), kwargs, strict=False)  # noqa: E731
    outer_grads = torch.autograd.grad(sft_losses_per_example(forward, gold).sum(), list(adapted.values()))
    return torch.stack([-lr * sum((a * b).sum() for a, b in zip(outer_grads, g)) for g in per_example])
