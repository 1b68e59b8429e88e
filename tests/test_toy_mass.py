"""MASS in miniature: generator densities, scorer start, attribution, config checks, checkpoint/resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution

import mass_ref.toy.mass as toy_mass
from mass_ref.maml import sine_mlp
from mass_ref.toy import (
    SineGenerator,
    SineScorer,
    ToyMassConfig,
    sample_sine_problems,
    synthetic_attributions,
    train_toy_mass,
    training_state,
    uniform_weights,
)


def problems(n: int = 4, seed: int = 0, dtype=torch.float32):
    return sample_sine_problems(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_generator_log_prob_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    gen, batch = SineGenerator(), problems()
    x, y = gen.sample(batch, 5, generator=torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (4, 5, 1) and x.abs().max() < 5
    placement = gen.placement_distribution(batch)
    reference_x = TransformedDistribution(Normal(placement.loc, placement.scale),
                                          [TanhTransform(), AffineTransform(0.0, 5.0)])
    reference = reference_x.log_prob(x) + Normal(gen.predict_labels(batch, x), gen.label_std).log_prob(y)
    assert torch.allclose(gen.log_prob(batch, x, y), reference[..., 0], atol=1e-4)


def test_reparameterised_samples_carry_the_pathwise_gradient() -> None:
    gen, batch = SineGenerator(), problems()
    x, y = gen.sample(batch, 3, generator=torch.Generator().manual_seed(0), reparameterize=True)
    grads = torch.autograd.grad((x.sum() + y.sum()), [gen.placement[-1].bias])
    assert grads[0].abs().sum() > 0
    x_plain, _ = gen.sample(batch, 3, generator=torch.Generator().manual_seed(0))
    assert not x_plain.requires_grad and torch.allclose(x_plain, x.detach())


def test_untrained_scorer_gives_uniform_weights() -> None:
    batch = problems()
    x, y = torch.randn(4, 6, 1), torch.randn(4, 6, 1)
    assert torch.allclose(SineScorer()(batch, x, y), uniform_weights(x))
    assert torch.allclose(uniform_weights(x), torch.full((4, 6), 1 / 6))


@pytest.mark.parametrize("num_inner_steps", [1, 2])
def test_attributions_match_finite_differences(num_inner_steps: int) -> None:
    torch.manual_seed(0)
    learner = sine_mlp(dtype=torch.float64)
    batch = problems(3, dtype=torch.float64)
    x = torch.rand(3, 4, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 10 - 5
    y = batch.true_labels(x) + 0.3
    weights = torch.full((3, 4), 0.25, dtype=torch.float64, requires_grad=True)
    config = ToyMassConfig(num_inner_steps=num_inner_steps, inner_lr=0.05)
    _, _, attribution = synthetic_attributions(learner, batch, x, y, weights, config, generator=torch.Generator())

    def per_problem_loss(w: torch.Tensor) -> torch.Tensor:
        prediction = toy_mass.adapt_and_predict(learner, batch, x, y, w, inner_lr=0.05, num_steps=num_inner_steps)
        return (prediction - batch.y_target).pow(2)

    eps = 1e-6
    for b, i in [(0, 0), (1, 2), (2, 3)]:
        bump = torch.zeros(3, 4, dtype=torch.float64)
        bump[b, i] = eps
        with torch.no_grad():
            fd = (per_problem_loss(weights + bump)[b] - per_problem_loss(weights - bump)[b]) / (2 * eps)
        assert attribution[b, i].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-10)


@pytest.mark.parametrize(
    ("field", "value"),
    [("outer_mode", "oracle"), ("num_synthetic", 1), ("num_inner_steps", 0), ("meta_batch_size", 0),
     ("inner_lr", 0.0), ("clip_eps", -0.1), ("gamma_solve", -1.0), ("num_answers", 1), ("tolerance", 0.0),
     ("backend", "jax")],
)
def test_config_names_the_bad_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        ToyMassConfig(**{field: value})
    with pytest.raises(ValueError, match="nothing to meta-train"):
        ToyMassConfig(train_generator=False, train_scorer=False)


def fresh_parts():
    torch.manual_seed(0)
    return sine_mlp(), SineGenerator(), SineScorer()


@pytest.mark.parametrize("outer_mode", ["gold", "verifier"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, outer_mode: str) -> None:
    config = ToyMassConfig(outer_mode=outer_mode, meta_batch_size=4, num_synthetic=4)
    learner, gen, scorer = fresh_parts()
    reference = train_toy_mass(learner, gen, scorer, config, steps=9, seed=5, progress=False)
    expected = training_state(gen, scorer)

    learner, gen, scorer = fresh_parts()
    path = tmp_path / "ckpt.pt"
    real_step, calls = toy_mass.mass_meta_step, {"n": 0}

    def crash_on_the_eighth_step(*args, **kwargs):  # a kill between checkpoints (saved at 3 and 6)
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(toy_mass, "mass_meta_step", crash_on_the_eighth_step)
    with pytest.raises(KeyboardInterrupt):
        train_toy_mass(learner, gen, scorer, config, steps=9, seed=5, checkpoint_path=path, checkpoint_every=3,
                       progress=False)
    monkeypatch.setattr(toy_mass, "mass_meta_step", real_step)

    learner, gen, scorer = fresh_parts()  # a new process: nothing survives but the checkpoint
    resumed = train_toy_mass(learner, gen, scorer, config, steps=9, seed=5, checkpoint_path=path,
                             checkpoint_every=3, progress=False)
    assert resumed == reference
    state = training_state(gen, scorer)
    assert all(torch.equal(state[k], expected[k]) for k in expected)

    with pytest.raises(ValueError, match=r"written by another run: seed \(5 in the checkpoint, 6 here\)"):
        train_toy_mass(learner, gen, scorer, config, steps=9, seed=6, checkpoint_path=path, progress=False)


def test_stop_after_checkpoints_and_resumes(tmp_path) -> None:
    config = ToyMassConfig(meta_batch_size=4, num_synthetic=4, train_generator=False)
    learner, gen, scorer = fresh_parts()
    full = train_toy_mass(learner, gen, scorer, config, steps=5, seed=1, progress=False)
    learner, gen, scorer = fresh_parts()
    first = train_toy_mass(learner, gen, scorer, config, steps=5, seed=1, checkpoint_path=tmp_path / "c.pt",
                           stop_after=2, progress=False)
    assert len(first) == 2
    learner, gen, scorer = fresh_parts()
    assert train_toy_mass(learner, gen, scorer, config, steps=5, seed=1, checkpoint_path=tmp_path / "c.pt",
                          progress=False) == full
    assert math.isfinite(full[-1]["outer_loss"])
    with pytest.raises(ValueError, match="steps"):
        train_toy_mass(learner, gen, scorer, config, steps=0, seed=1)


def test_pathwise_gradient_matches_finite_differences() -> None:
    torch.manual_seed(0)
    learner, gen = sine_mlp(dtype=torch.float64), SineGenerator().double()
    batch = problems(3, dtype=torch.float64)
    config = ToyMassConfig(num_synthetic=4, num_inner_steps=2, inner_lr=0.05)
    bias = gen.placement[-1].bias

    def loss() -> torch.Tensor:
        return toy_mass.pathwise_outer_loss(learner, gen, batch, config, generator=torch.Generator().manual_seed(4))

    (grad,) = torch.autograd.grad(loss(), [bias])
    eps = 1e-6
    for j in range(2):
        with torch.no_grad():
            bias[j] += eps
            up = loss()
            bias[j] -= 2 * eps
            down = loss()
            bias[j] += eps
        assert grad[j].item() == pytest.approx(((up - down) / (2 * eps)).item(), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("outer_mode", ["gold", "verifier"])
def test_higher_and_torch_func_backends_agree(outer_mode: str) -> None:
    torch.manual_seed(0)
    learner, scorer = sine_mlp(dtype=torch.float64), SineScorer().double()
    batch = problems(3, dtype=torch.float64)
    x = torch.rand(3, 5, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 10 - 5
    y = batch.true_labels(x) - 0.2
    results = {}
    for backend in ("higher", "torch.func"):
        config = ToyMassConfig(outer_mode=outer_mode, num_inner_steps=2, inner_lr=0.05, backend=backend)
        weights = scorer(batch, x, y)
        loss, prediction, attribution = synthetic_attributions(learner, batch, x, y, weights, config,
                                                               generator=torch.Generator().manual_seed(9),
                                                               keep_graph=True)
        grads = torch.autograd.grad(loss, list(scorer.parameters()))
        results[backend] = (loss.detach(), prediction.detach(), attribution, grads)
    for a, b in zip(results["higher"][:3], results["torch.func"][:3]):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    for a, b in zip(results["higher"][3], results["torch.func"][3]):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)


def test_meta_step_matches_an_independent_implementation_of_the_update() -> None:
    """One meta-step with SGD, rebuilt from the equations: scorer ← η − lr ∇_η L; generator ← two epochs of
    clipped GRPO on r = −∂L/∂s with advantages normalised per problem and a fixed π_old, plus γ L_solve."""
    torch.manual_seed(0)
    learner = sine_mlp(dtype=torch.float64)
    gen, scorer = SineGenerator().double(), SineScorer().double()
    with torch.no_grad():  # non-trivial scorer output so its gradient is not degenerate
        scorer.net[-1].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    batch = problems(3, dtype=torch.float64)
    config = ToyMassConfig(num_synthetic=4, num_inner_steps=2, inner_lr=0.05, ppo_epochs=2, clip_eps=0.2,
                           gamma_solve=0.1, backend="torch.func")
    lr_g, lr_s = 0.5, 0.1
    gen_ref, scorer_ref = copy.deepcopy(gen), copy.deepcopy(scorer)
    rng = torch.Generator().manual_seed(3)
    rng_ref = torch.Generator().set_state(rng.get_state())

    # reference, from the docstring's equations
    x, y = gen_ref.sample(batch, config.num_synthetic, generator=rng_ref)
    weights = scorer_ref(batch, x, y)
    prediction = toy_mass.adapt_and_predict(learner, batch, x, y, weights, inner_lr=0.05, num_steps=2)
    loss = (prediction - batch.y_target).pow(2).mean()
    (g,) = torch.autograd.grad(loss, weights, retain_graph=True)
    scorer_grads = torch.autograd.grad(loss, list(scorer_ref.parameters()))
    with torch.no_grad():
        for p, grad in zip(scorer_ref.parameters(), scorer_grads):
            p -= lr_s * grad
    rewards = -g * len(batch)
    advantages = (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True, unbiased=False) + 1e-6)
    logp_old = gen_ref.log_prob(batch, x, y).detach()
    for _ in range(2):
        ratio = torch.exp(gen_ref.log_prob(batch, x, y) - logp_old)
        surrogate = -torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages).mean()
        total = surrogate + 0.1 * gen_ref.solve_loss(batch)
        grads = torch.autograd.grad(total, [p for p in gen_ref.parameters() if p.requires_grad])
        with torch.no_grad():
            for p, grad in zip([p for p in gen_ref.parameters() if p.requires_grad], grads):
                p -= lr_g * grad

    optimizers = {"generator": torch.optim.SGD(gen.parameters(), lr=lr_g),
                  "scorer": torch.optim.SGD(scorer.parameters(), lr=lr_s)}
    toy_mass.mass_meta_step(learner, gen, scorer, batch, config, optimizers, generator=rng)
    for name, module, reference in (("scorer", scorer, scorer_ref), ("generator", gen, gen_ref)):
        for (key, p), q in zip(module.named_parameters(), reference.parameters()):
            assert torch.allclose(p, q, rtol=0, atol=1e-10), f"{name}.{key}"
    moved = max((p - q).abs().max().item() for p, q in zip(gen.parameters(), copy.deepcopy(gen_ref).parameters()))
    assert moved == 0.0


def test_verifier_loss_pushes_the_answer_towards_the_target() -> None:
    batch = problems(2, dtype=torch.float64)
    batch = type(batch)(batch.amplitude, batch.phase, batch.x_target, torch.zeros(2, dtype=torch.float64))
    prediction = torch.tensor([-0.6, 0.6], dtype=torch.float64, requires_grad=True)
    config = ToyMassConfig(outer_mode="verifier", num_answers=512, answer_std=0.5, tolerance=0.5)
    loss = toy_mass.outer_losses(prediction, batch, config, generator=torch.Generator().manual_seed(0)).sum()
    (grad,) = torch.autograd.grad(loss, prediction)
    assert grad[0] < 0 < grad[1]  # descending the loss moves both answers towards y* = 0


def test_stop_after_is_idempotent_and_fewer_steps_than_done_is_refused(tmp_path) -> None:
    config = ToyMassConfig(meta_batch_size=4, num_synthetic=4, train_generator=False, backend="torch.func")
    path = tmp_path / "c.pt"
    for _ in range(2):  # calling again with the same stop_after must not take another step
        learner, gen, scorer = fresh_parts()
        assert len(train_toy_mass(learner, gen, scorer, config, steps=5, seed=1, checkpoint_path=path,
                                  stop_after=2, progress=False)) == 2
    learner, gen, scorer = fresh_parts()
    with pytest.raises(ValueError, match="steps"):
        train_toy_mass(learner, gen, scorer, config, steps=1, seed=1, checkpoint_path=path, progress=False)


def test_resume_refuses_other_starting_models(tmp_path) -> None:
    config = ToyMassConfig(meta_batch_size=4, num_synthetic=4, train_generator=False, backend="torch.func")
    learner, gen, scorer = fresh_parts()
    train_toy_mass(learner, gen, scorer, config, steps=3, seed=1, checkpoint_path=tmp_path / "c.pt", stop_after=1,
                   progress=False)
    learner, gen, scorer = fresh_parts()
    with torch.no_grad():
        learner[0].weight.add_(0.01)  # another base model
    with pytest.raises(ValueError, match="starting models"):
        train_toy_mass(learner, gen, scorer, config, steps=3, seed=1, checkpoint_path=tmp_path / "c.pt", progress=False)
