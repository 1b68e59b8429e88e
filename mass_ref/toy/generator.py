"""The generator π_ψ(x, y | T): writes m synthetic training examples for one problem.

A stochastic policy with tractable log-probabilities, in two parts:

* placement: x = 5 tanh(u), u ~ N(μ_ψ(T), σ_ψ(T)²), where (μ, log σ) come from an MLP of the
  statement (a squashed Gaussian: x stays inside the task's domain (−5, 5));
* labelling: y | x ~ N(ŷ_ψ(A, φ, x), σ_y²), where ŷ_ψ is the generator's own regressor — its
  "knowledge" of sine waves. It is pretrained only on x < 0, so its labels for x > 0 are
  extrapolations and often wrong: the toy's version of an LLM that is right on some skills and
  confidently wrong on others.

log π(x, y | T) = log N(u; μ, σ²) − log(5 (1 − tanh² u)) + log N(y; ŷ(A, φ, x), σ_y²),  u = atanh(x/5).

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mass_ref.maml import sine_mlp
from mass_ref.training import adam_train
from mass_ref.toy.problems import SineProblems, sample_sine_problems

X_SCALE = 5.0
INITIAL_U_STD = 0.8  # u ~ N(0, 0.8²) makes x = 5 tanh(u) spread over the whole of (−5, 5)


class SineGenerator(nn.Module):
    """π_ψ: placement MLP (statement → μ, log σ of u) and labelling MLP ((A, φ, x) → ŷ).

    Args:
        label_std: σ_y, the fixed spread of the generator's own labels around ŷ.
    """

    def __init__(self, label_std: float = 0.3) -> None:
        super().__init__()
        self.placement = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 2))
        nn.init.zeros_(self.placement[-1].weight)
        with torch.no_grad():  # start with no preference for where to practise
            self.placement[-1].bias.copy_(torch.tensor([0.0, math.log(INITIAL_U_STD)]))
        self.labeler = sine_mlp(in_features=3)
        self.register_buffer("label_std", torch.tensor(float(label_std)))

    def placement_distribution(self, problems: SineProblems) -> torch.distributions.Normal:
        """N(μ_ψ(T), σ_ψ(T)²) over u (x = 5 tanh u), batch shape ``[B, 1, 1]``."""
        mean, log_std = self.placement(problems.statement()).unbind(-1)
        return torch.distributions.Normal(mean[:, None, None], log_std.clamp(-4, 1).exp()[:, None, None])

    def predict_labels(self, problems: SineProblems, x: Tensor) -> Tensor:
        """ŷ_ψ(A, φ, x) for ``x`` of shape ``[B, m, 1]`` → ``[B, m, 1]``."""
        statement = torch.stack([problems.amplitude / 5, problems.phase / torch.pi], dim=-1)
        inputs = torch.cat([x / 5, statement[:, None, :].expand(*x.shape[:2], 2)], dim=-1)
        return self.labeler(inputs)

    def label_distribution(self, problems: SineProblems, x: Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.predict_labels(problems, x), self.label_std)

    def sample(
        self, problems: SineProblems, num_examples: int, *, generator: torch.Generator, reparameterize: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Draw ``num_examples`` (x, y) pairs per problem, each of shape ``[B, m, 1]``.

        With ``reparameterize=True`` the samples are differentiable functions of ψ
        (x = 5 tanh(μ + σε), y = ŷ(x) + σ_y ε'): the pathwise gradient that only continuous data allows.
        """
        placement = self.placement_distribution(problems)
        shape = (len(problems), num_examples, 1)
        eps_x = torch.randn(shape, generator=generator, dtype=placement.loc.dtype)
        eps_y = torch.randn(shape, generator=generator, dtype=placement.loc.dtype)
        with torch.set_grad_enabled(reparameterize and torch.is_grad_enabled()):
            x = X_SCALE * torch.tanh(placement.loc + placement.scale * eps_x)
            y = self.predict_labels(problems, x) + self.label_std * eps_y
        return x, y

    def log_prob(self, problems: SineProblems, x: Tensor, y: Tensor) -> Tensor:
        """log π_ψ(x_i, y_i | T) per example, shape ``[B, m]`` (change of variables for x = 5 tanh u)."""
        ratio = (x / X_SCALE).clamp(-1 + 1e-6, 1 - 1e-6)
        u = torch.atanh(ratio)
        log_px = self.placement_distribution(problems).log_prob(u) - torch.log(X_SCALE * (1 - ratio.pow(2)))
        return (log_px + self.label_distribution(problems, x).log_prob(y))[..., 0]

    def solve_loss(self, problems: SineProblems) -> Tensor:
        """L_solve: squared error of the generator's own answer ŷ_ψ(A, φ, x*) to y* (a scalar)."""
        x = problems.x_target[:, None, None]
        return (self.predict_labels(problems, x)[:, 0, 0] - problems.y_target).pow(2).mean()


def pretrain_labeler(
    generator_model: SineGenerator,
    *,
    iterations: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    x_range: tuple[float, float] = (-5.0, 0.0),
    progress: bool = True,
) -> list[float]:
    """Fit ŷ_ψ to true labels A sin(x − φ) for x in ``x_range`` only (its knowledge has a gap)."""

    def step_loss() -> Tensor:
        problems = sample_sine_problems(batch_size, generator=generator)
        x = x_range[0] + (x_range[1] - x_range[0]) * torch.rand(batch_size, 8, 1, generator=generator)
        return (generator_model.predict_labels(problems, x) - problems.true_labels(x)).pow(2).mean()

    return adam_train(generator_model.labeler, step_loss, iterations=iterations, lr=lr, desc="generator labeler",
                      progress=progress)
