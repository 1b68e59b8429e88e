"""Group-relative advantages, the clipped surrogate, atomic checkpoints and the shared resumable loop."""

from __future__ import annotations

import hashlib

import pytest
import torch

from mass_ref.checkpoint import fingerprint, load_checkpoint, resumable_loop, save_checkpoint
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


def test_fingerprint_keeps_the_toy_recipe_and_takes_any_dtype() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    digest = hashlib.sha256()  # the recipe toy checkpoints were written with: resuming them must still work
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    assert fingerprint(model) == digest.hexdigest()
    half = torch.nn.Linear(3, 2).to(torch.bfloat16)  # numpy has no bfloat16
    assert fingerprint(half) != fingerprint(half.float()) and fingerprint(half) == fingerprint(half)


def _counting_run(tmp_path, model, **overrides):
    """A resumable run whose step adds 1 to the model's bias; returns the history."""
    options = dict(steps=4, config={"lr": 0.1}, seed=0, checkpoint_path=tmp_path / "c.pt", checkpoint_every=2,
                   progress=False)
    options.update(overrides)

    def step(t: int) -> dict[str, float]:
        with torch.no_grad():
            model.bias.add_(1.0)
        return {"t": float(t)}

    return resumable_loop(step, starting_models=[model], training_state=lambda: {"model": model.state_dict()},
                          restore=lambda state: model.load_state_dict(state["model"]), **options)


def fresh() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(2, 1)


def test_resumable_loop_resumes_and_names_what_differs(tmp_path) -> None:
    assert len(_counting_run(tmp_path, fresh(), stop_after=3)) == 3  # checkpointed at 2 and 3
    model = fresh()
    assert [h["t"] for h in _counting_run(tmp_path, model)] == [0.0, 1.0, 2.0, 3.0]
    assert torch.allclose(model.bias, fresh().bias + 4)
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["step"] == 4 and state["start"] == fingerprint(fresh())
    with pytest.raises(ValueError, match=r"another run: config lr \(0.1 in the checkpoint, 0.2 here\); seed \(0 in"):
        _counting_run(tmp_path, fresh(), config={"lr": 0.2}, seed=1)
    other = fresh()
    with torch.no_grad():
        other.weight.add_(1.0)
    with pytest.raises(ValueError, match=r"another run: starting models \(fingerprint \w+… in the checkpoint"):
        _counting_run(tmp_path, other)
    with pytest.raises(ValueError, match="already holds 4 steps, more than steps=3"):
        _counting_run(tmp_path, fresh(), steps=3)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive integer; got 0"):
        _counting_run(tmp_path, fresh(), checkpoint_every=0)


def test_resumable_loop_resumes_a_checkpoint_without_fingerprint(tmp_path) -> None:
    _counting_run(tmp_path, fresh(), stop_after=2)
    legacy = load_checkpoint(tmp_path / "c.pt")
    del legacy["start"]  # written before checkpoints recorded their starting models
    save_checkpoint(tmp_path / "c.pt", legacy)
    other = fresh()
    with torch.no_grad():
        other.weight.add_(1.0)
    assert len(_counting_run(tmp_path, other)) == 4  # config and seed still checked, the models cannot be
