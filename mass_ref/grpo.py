"""Group-relative policy gradients: advantages normalised within a group, and PPO's clipped loss.

For a group of G samples drawn for the same prompt (MASS: the m synthetic examples of one
problem, or the k answers to it) with rewards r_1..r_G,

    A_j = (r_j − mean(r)) / (std(r) + ε)

and the clipped surrogate of PPO/GRPO, with ρ_j = π_new(a_j) / π_old(a_j),

    L_clip = − mean_j min(ρ_j A_j, clip(ρ_j, 1 − ε_clip, 1 + ε_clip) A_j).

At ρ = 1 its gradient is the REINFORCE gradient − mean_j A_j ∇ log π(a_j).

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalise ``rewards`` (shape ``[..., G]``) to zero mean and unit std within the last dimension.

    A group whose rewards are all equal gets zero advantages (no learning signal).
    """
    if rewards.ndim == 0 or rewards.shape[-1] < 2:
        raise ValueError(f"rewards must have a group dimension of size >= 2 last; got shape {tuple(rewards.shape)}.")
    centred = rewards - rewards.mean(-1, keepdim=True)
    return centred / (rewards.std(-1, keepdim=True, unbiased=False) + eps)


def clipped_policy_loss(logp_new: Tensor, logp_old: Tensor, advantages: Tensor, clip_eps: float = 0.2) -> Tensor:
    """The PPO/GRPO clipped surrogate, averaged over every sample (a scalar to minimise).

    Args:
        logp_new: log π_new(a) with gradient, any shape.
        logp_old: log π_old(a) of the same samples (treated as constants), same shape.
        advantages: A, same shape (constants).
        clip_eps: ε_clip > 0.
    """
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be positive; got {clip_eps!r}.")
    if not (logp_new.shape == logp_old.shape == advantages.shape):
        raise ValueError(
            f"logp_new, logp_old and advantages must share a shape; got {tuple(logp_new.shape)}, "
            f"{tuple(logp_old.shape)}, {tuple(advantages.shape)}."
        )
    ratio = torch.exp(logp_new - logp_old.detach())
    advantages = advantages.detach()
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    return -torch.minimum(ratio * advantages, clipped * advantages).mean()
