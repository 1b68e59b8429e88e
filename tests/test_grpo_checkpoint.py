"""Group-relative advantages, the clipped surrogate, and atomic checkpoints."""

from __future__ import annotations

import pytest
import torch

from mass_ref.checkpoint import load_checkpoint, save_checkpoint
from mass_ref.grpo import clipped_policy_loss, group_advantages


def test_group_advantages_are_normalised_within_each_group() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 3.0, 3.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv.mean(-1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(adv[[0, 2]].std(-1, unbiased=False), torch.ones(2), atol=1e-4)
    assert torch.equal(adv[1], torch.zeros(4))  # no signal when every sample scored the same
    with pytest.raises(ValueError, match="group dimension"):
        group_advantages(torch.tensor([1.0]))


def test_clipped_loss_is_reinforce_at_ratio_one() -> None:
    theta = torch.tensor([0.3, -0.2], requires_grad=True)
    actions = torch.tensor([0, 1, 1, 0, 1])
    advantages = torch.tensor([1.0, -0.5, 2.0, 0.0, -1.0])
    logp = torch.log_softmax(theta, 0)[actions]
    (g_clip,) = torch.autograd.grad(clipped_policy_loss(logp, logp.detach(), advantages), theta)
    logp = torch.log_softmax(theta, 0)[actions]
    (g_reinforce,) = torch.autograd.grad(-(advantages * logp).mean(), theta)
    assert torch.allclose(g_clip, g_reinforce)


@pytest.mark.parametrize(("log_ratio", "advantage"), [(0.5, 1.0), (-0.5, -1.0)])
def test_clipping_stops_the_gradient_outside_the_trust_region(log_ratio: float, advantage: float) -> None:
    logp_new = torch.tensor([log_ratio], requires_grad=True)
    loss = clipped_policy_loss(logp_new, torch.zeros(1), torch.tensor([advantage]), clip_eps=0.2)
    (grad,) = torch.autograd.grad(loss, logp_new)
    assert grad.item() == 0.0
    inside = torch.tensor([0.05], requires_grad=True)
    (grad_inside,) = torch.autograd.grad(clipped_policy_loss(inside, torch.zeros(1), torch.tensor([advantage])), inside)
    assert grad_inside.item() != 0.0


def test_clipped_loss_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="clip_eps"):
        clipped_policy_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), clip_eps=0.0)
    with pytest.raises(ValueError, match="share a shape"):
        clipped_policy_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2))


def test_checkpoints_round_trip_and_write_atomically(tmp_path) -> None:
    path = tmp_path / "run" / "state.pt"
    assert load_checkpoint(path) is None and load_checkpoint(None) is None
    rng = torch.Generator().manual_seed(3)
    save_checkpoint(path, {"step": 7, "weights": torch.arange(3.0), "rng": rng.get_state()})
    state = load_checkpoint(path)
    assert state["step"] == 7 and torch.equal(state["weights"], torch.arange(3.0))
    assert torch.equal(torch.Generator().set_state(state["rng"]).get_state(), rng.get_state())
    assert not list(path.parent.glob("*.tmp"))


def test_a_negative_advantage_keeps_its_gradient_above_the_clip() -> None:
    """min(ρA, clip(ρ)A) with A < 0 and ρ > 1 + ε picks the unclipped ρA: the update still pushes ρ down."""
    logp_new = torch.tensor([0.5], requires_grad=True)
    loss = clipped_policy_loss(logp_new, torch.zeros(1), torch.tensor([-1.0]), clip_eps=0.2)
    (grad,) = torch.autograd.grad(loss, logp_new)
    assert grad.item() == pytest.approx(torch.exp(torch.tensor(0.5)).item())  # d(−ρA)/d log π = ρ
