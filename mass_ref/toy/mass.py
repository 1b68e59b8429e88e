"""MASS in miniature: one meta-step and the resumable meta-training loop.

For a meta-batch of problems T_b, one meta-step does

1. generate: (x_bi, y_bi) ~ π_ψ(· | T_b), i = 1..m                           (no gradient to ψ here)
2. score:    s_bi = s_η(T_b, x_bi, y_bi)                                      (or uniform 1/m)
3. adapt:    θ'_b = θ − α ∇_θ Σ_i s_bi ℓ(θ; x_bi, y_bi), K steps        (inner_adapt: higher, or vmap over b)
4. outer:    L_b = (f_θ'_b(x*_b) − y*_b)²                          (gold: MASS_gold)
             L_b = − mean_j A_bj log N(ŷ_bj; f_θ'_b(x*_b), σ²),  ŷ_bj ~ that Normal,
                   A_bj = group-normalised 1[|ŷ_bj − y*_b| < tol]             (verifier: MASS, GRPO)
5. attribute: g_bi = ∂L_b/∂s_bi, through the inner loop (second order)
6. update η by ∇_η mean_b L_b (the same backward pass), and ψ by clipped GRPO with per-example
   rewards r_bi = −g_bi, advantages normalised over the m examples of each problem, + γ L_solve.

The learner θ is a frozen "pretrained" model: only the generator ψ and the scorer η are meta-learned.

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from os import PathLike
from typing import Any

import torch
from torch import Tensor, nn

from mass_ref.checkpoint import resumable_loop
from mass_ref.grpo import clipped_policy_loss, group_advantages
from mass_ref.inner import BACKENDS, NonFiniteError, inner_adapt, tensor_is_inspectable
from mass_ref.maml import mse_per_example
from mass_ref.toy.generator import SineGenerator
from mass_ref.toy.problems import SineProblems, sample_sine_problems
from mass_ref.toy.scorer import SineScorer, uniform_weights

OUTER_MODES = ("gold", "verifier")


@dataclass(frozen=True)
class ToyMassConfig:
    """Hyper-parameters of toy MASS meta-training (paper symbols in brackets).

    Attributes:
        outer_mode: "gold" (MASS_gold: squared error to y*) or "verifier" (MASS: GRPO, pass/fail reward).
        train_generator, train_scorer: which parts are meta-learned (ablations switch one off).
        num_synthetic: m examples per problem while meta-training (paper: 12).
        num_inner_steps: inner SGD steps while meta-training (paper: 2).
        inner_lr: α of the learner's inner SGD.
        meta_batch_size: problems per meta-step.
        generator_lr, scorer_lr: Adam step sizes for ψ and η.
        clip_eps: PPO clip range ε. ppo_epochs: policy updates per batch of samples.
        gamma_solve: γ, weight of the generator's own solving loss.
        num_answers: k answers sampled per problem in verifier mode.
        answer_std: σ of the learner's answer distribution N(f_θ'(x*), σ²) in verifier mode.
        tolerance: an answer passes the verifier when |ŷ − y*| < tolerance.
        backend: inner-loop backend, "higher" (one problem at a time; the design choice) or
            "torch.func" (all problems in one vmap; same numbers, much faster on small learners).

    Fields that a mode does not use are still validated and recorded (a checkpoint resumes only under
    the identical config): ``num_answers``, ``answer_std`` and ``tolerance`` act only in verifier
    mode; ``generator_lr``, ``clip_eps``, ``ppo_epochs`` and ``gamma_solve`` only when
    ``train_generator``; ``scorer_lr`` only when ``train_scorer``.
    """

    outer_mode: str = "gold"
    train_generator: bool = True
    train_scorer: bool = True
    num_synthetic: int = 12
    num_inner_steps: int = 2
    inner_lr: float = 0.01
    meta_batch_size: int = 32
    generator_lr: float = 1e-3
    scorer_lr: float = 3e-3
    clip_eps: float = 0.2
    ppo_epochs: int = 2
    gamma_solve: float = 0.1
    num_answers: int = 8
    answer_std: float = 0.5
    tolerance: float = 0.5
    backend: str = "higher"

    def __post_init__(self) -> None:
        if self.outer_mode not in OUTER_MODES:
            raise ValueError(f"outer_mode must be one of {OUTER_MODES}; got {self.outer_mode!r}.")
        if not (self.train_generator or self.train_scorer):
            raise ValueError("train_generator and train_scorer are both False: there is nothing to meta-train.")
        for name in ("num_synthetic", "num_inner_steps", "meta_batch_size", "ppo_epochs", "num_answers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (2 if name in ("num_synthetic", "num_answers") else 1):
                raise ValueError(f"{name} must be an integer >= {2 if name in ('num_synthetic', 'num_answers') else 1}; got {value!r}.")
        for name in ("inner_lr", "generator_lr", "scorer_lr", "clip_eps", "answer_std", "tolerance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)!r}.")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {self.backend!r}.")
        if self.gamma_solve < 0:
            raise ValueError(f"gamma_solve must be >= 0; got {self.gamma_solve!r}.")


def frozen_params(learner: nn.Module) -> dict[str, Tensor]:
    """The learner's parameters as constants: θ is not meta-learned in the toy."""
    return {name: p.detach() for name, p in learner.named_parameters()}


def adapt_and_predict(
    learner: nn.Module,
    problems: SineProblems,
    x: Tensor,
    y: Tensor,
    weights: Tensor,
    *,
    inner_lr: float,
    num_steps: int,
    backend: str = "torch.func",
) -> Tensor:
    """f_θ'(x*) per problem after weighted SGD on its synthetic set: ``x, y [B, m, 1]``, ``weights [B, m]`` → ``[B]``.

    ``backend="torch.func"`` adapts all problems in one ``vmap``; ``"higher"`` loops over problems (same
    numbers). The default is the fast path because test-time evaluation needs no second-order graph;
    meta-training passes ``ToyMassConfig.backend``.

    Raises:
        ~mass_ref.inner.NonFiniteError: an inner loop diverged (e.g. ``inner_lr`` too large), naming the
            problem and the inner step. Inside vmap the kernel cannot check itself, so the predictions
            are checked after it (one host sync) and a failing problem is re-run alone to find the step;
            a prediction that overflows from finite parameters is reported as such.
    """
    start = frozen_params(learner)

    def one_problem(xs: Tensor, ys: Tensor, ws: Tensor, x_target: Tensor) -> Tensor:
        adapted = inner_adapt(learner, mse_per_example, (xs, ys), inner_lr=inner_lr, num_steps=num_steps,
                              weights=ws, backend=backend, params=start)
        return adapted(x_target.view(1, 1))[0, 0]

    if backend == "torch.func":
        prediction = torch.func.vmap(one_problem)(x, y, weights, problems.x_target)
    else:
        prediction = torch.stack([one_problem(*per_problem) for per_problem in zip(x, y, weights, problems.x_target)])
    _check_predictions(prediction, lambda b: one_problem(x[b], y[b], weights[b], problems.x_target[b]))
    return prediction


def _check_predictions(prediction: Tensor, rerun: Callable[[int], Tensor]) -> None:
    """Raise :class:`~mass_ref.inner.NonFiniteError` for the first non-finite prediction, located by ``rerun(b)``."""
    finite = torch.isfinite(prediction.detach())
    if not tensor_is_inspectable(finite) or bool(finite.all()):
        return
    b = int((~finite).nonzero()[0])
    try:
        rerun(b)  # outside vmap the kernel checks itself and names the inner step
    except NonFiniteError as error:
        raise NonFiniteError(f"problem {b} of the batch, {error}", step=error.step, what=error.what) from error
    raise NonFiniteError(f"problem {b} of the batch: after the last inner step the adapted learner predicts "
                         f"{prediction[b].item()} (its parameters are finite but huge): the inner loop diverged; "
                         "lower inner_lr.", what="prediction")


def outer_losses(prediction: Tensor, problems: SineProblems, config: ToyMassConfig, *, generator: torch.Generator) -> Tensor:
    """L_b per problem, shape ``[B]`` (see the module docstring for both modes)."""
    if config.outer_mode == "gold":
        return (prediction - problems.y_target).pow(2)
    noise = torch.randn(len(problems), config.num_answers, generator=generator, dtype=prediction.dtype)
    answers = prediction.detach()[:, None] + config.answer_std * noise
    rewards = ((answers - problems.y_target[:, None]).abs() < config.tolerance).to(prediction.dtype)
    log_prob = torch.distributions.Normal(prediction[:, None], config.answer_std).log_prob(answers)
    return -(group_advantages(rewards) * log_prob).mean(-1)


def synthetic_attributions(
    learner: nn.Module,
    problems: SineProblems,
    x: Tensor,
    y: Tensor,
    weights: Tensor,
    config: ToyMassConfig,
    *,
    generator: torch.Generator,
    keep_graph: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Outer loss and the attribution of every synthetic example.

    Returns ``(L, prediction, g)``: L = mean_b L_b (a scalar, its graph kept when ``keep_graph``),
    f_θ'(x*) of shape ``[B]``, and g_bi = ∂L_b/∂s_bi of shape ``[B, m]`` — second order, through
    the ``config.num_inner_steps`` inner steps. ``weights`` must require grad.
    """
    prediction = adapt_and_predict(learner, problems, x, y, weights, inner_lr=config.inner_lr,
                                   num_steps=config.num_inner_steps, backend=config.backend)
    loss = outer_losses(prediction, problems, config, generator=generator).mean()
    (attribution,) = torch.autograd.grad(loss, weights, retain_graph=keep_graph)
    return loss, prediction, attribution * len(problems)  # L is a mean over b: undo the 1/B


def pathwise_outer_loss(
    learner: nn.Module,
    generator_model: SineGenerator,
    problems: SineProblems,
    config: ToyMassConfig,
    *,
    generator: torch.Generator,
) -> Tensor:
    """Gold outer loss with reparameterised samples: a differentiable function of ψ.

    ∇_ψ of this is the pathwise gradient (x = 5 tanh(μ_ψ + σ_ψ ε), y = ŷ_ψ(x) + σ_y ε'), which exists
    only because the toy's examples are continuous; an LLM's tokens are not, hence MASS's
    attribution reward. Uniform weights; ``config.num_synthetic`` and ``num_inner_steps`` apply.
    """
    x, y = generator_model.sample(problems, config.num_synthetic, generator=generator, reparameterize=True)
    prediction = adapt_and_predict(learner, problems, x, y, uniform_weights(x), inner_lr=config.inner_lr,
                                   num_steps=config.num_inner_steps, backend=config.backend)
    return (prediction - problems.y_target).pow(2).mean()


def mass_meta_step(
    learner: nn.Module,
    generator_model: SineGenerator,
    scorer: SineScorer,
    problems: SineProblems,
    config: ToyMassConfig,
    optimizers: dict[str, torch.optim.Optimizer],
    *,
    generator: torch.Generator,
) -> dict[str, float]:
    """One MASS meta-step on ``problems``; updates ψ and/or η in place; returns diagnostics."""
    x, y = generator_model.sample(problems, config.num_synthetic, generator=generator)
    weights = scorer(problems, x, y) if config.train_scorer else uniform_weights(x).requires_grad_()
    loss, prediction, attribution = synthetic_attributions(
        learner, problems, x, y, weights, config, generator=generator, keep_graph=config.train_scorer)
    if config.train_scorer:
        optimizers["scorer"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["scorer"].step()
    if config.train_generator:
        advantages = group_advantages(-attribution)
        logp_old = generator_model.log_prob(problems, x, y).detach()
        for _ in range(config.ppo_epochs):
            policy_loss = clipped_policy_loss(generator_model.log_prob(problems, x, y), logp_old, advantages,
                                              config.clip_eps)
            total = policy_loss + config.gamma_solve * generator_model.solve_loss(problems)
            optimizers["generator"].zero_grad(set_to_none=True)
            total.backward()
            optimizers["generator"].step()
    label_error = (y - problems.true_labels(x)).abs()[..., 0]
    return {
        "outer_loss": loss.item(),
        "abs_error": (prediction - problems.y_target).abs().mean().item(),
        "mean_offset": (x[..., 0] - problems.x_target[:, None]).abs().mean().item(),
        "frac_left": (x < 0).to(x.dtype).mean().item(),
        "mean_label_error": label_error.mean().item(),
        "weight_label_error_corr": _correlation(weights.detach().flatten(), label_error.flatten()),
    }


def _correlation(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = (a.norm() * b.norm()).item()
    return (a @ b).item() / denominator if denominator > 0 else 0.0


def train_toy_mass(
    learner: nn.Module,
    generator_model: SineGenerator,
    scorer: SineScorer,
    config: ToyMassConfig,
    *,
    steps: int,
    seed: int,
    checkpoint_path: str | PathLike[str] | None = None,
    checkpoint_every: int = 100,
    stop_after: int | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[list[dict[str, float]]], None] | None = None,
) -> list[dict[str, float]]:
    """Meta-train ψ and/or η for ``steps`` meta-steps; returns the per-step diagnostics.

    With ``checkpoint_path``, the generator, scorer, both optimisers, the sampling RNG and the
    history are saved every ``checkpoint_every`` steps and at the end; calling again with the same
    arguments resumes from the last checkpoint and reaches the same final state as a run that was
    never interrupted (:func:`~mass_ref.checkpoint.resumable_loop`). "The same arguments" includes
    the starting models: a checkpoint made from another learner, initial generator or scorer
    initialisation is refused, even when the config and seed match. ``stop_after`` ends the call
    early (after checkpointing), to interrupt on purpose. ``on_checkpoint(history)`` is called after
    every checkpoint (e.g. to write a metrics log that always matches the last checkpoint).

    Raises:
        ~mass_ref.inner.NonFiniteError: an inner loop diverged; names the meta-step, ``inner_lr`` and the inner step.
    """
    rng = torch.Generator().manual_seed(seed)
    optimizers = {"generator": torch.optim.Adam(generator_model.parameters(), lr=config.generator_lr),
                  "scorer": torch.optim.Adam(scorer.parameters(), lr=config.scorer_lr)}

    def state() -> dict[str, Any]:
        return {"generator": generator_model.state_dict(), "scorer": scorer.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()}, "rng": rng.get_state()}

    def restore(saved: dict[str, Any]) -> None:
        generator_model.load_state_dict(saved["generator"])
        scorer.load_state_dict(saved["scorer"])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(saved["optimizers"][name])
        rng.set_state(saved["rng"])

    def step(t: int) -> dict[str, float]:
        problems = sample_sine_problems(config.meta_batch_size, generator=rng)
        try:
            return mass_meta_step(learner, generator_model, scorer, problems, config, optimizers, generator=rng)
        except NonFiniteError as error:  # say which meta-step, and which config fields set the inner loop
            raise NonFiniteError(
                f"toy MASS meta-step {t} (inner_lr={config.inner_lr}, num_inner_steps={config.num_inner_steps}): "
                f"{error}", step=error.step, what=error.what) from error

    parts = [config.outer_mode, *([] if config.train_generator else ["scorer only"]),
             *([] if config.train_scorer else ["generator only"])]
    return resumable_loop(
        step, steps=steps, config=asdict(config), seed=seed, starting_models=(learner, generator_model, scorer),
        training_state=state, restore=restore, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
        stop_after=stop_after, progress=progress, desc=f"MASS ({', '.join(parts)})", on_checkpoint=on_checkpoint)


def training_state(generator_model: SineGenerator, scorer: SineScorer) -> dict[str, Any]:
    """Everything meta-training changes, as tensors (for comparing runs)."""
    return {**{f"generator.{k}": v for k, v in generator_model.state_dict().items()},
            **{f"scorer.{k}": v for k, v in scorer.state_dict().items()}}
