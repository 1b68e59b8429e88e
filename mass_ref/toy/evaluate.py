"""Test-time evaluation of toy MASS and its baselines: |f_θ'(x*) − y*| per held-out problem.

At test time every method gets the same budget: m examples (paper: 6), one inner SGD step,
the adapted state discarded after answering. They differ only in which data and weights they use:

| method          | synthetic data                          | weights              |
|-----------------|-----------------------------------------|----------------------|
| Base            | none (no adaptation)                    | –                    |
| Base TTT        | real points of a *random other* task    | uniform              |
| TT-SS           | the un-meta-trained generator           | uniform              |
| scorer only     | the un-meta-trained generator           | meta-trained scorer  |
| generator only  | the meta-trained generator              | uniform              |
| MASS_gold, MASS | the meta-trained generator              | meta-trained scorer  |

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mass_ref.tasks.sine import sample_sine_tasks
from mass_ref.toy.generator import SineGenerator
from mass_ref.toy.mass import adapt_and_predict
from mass_ref.toy.problems import SineProblems
from mass_ref.toy.scorer import SineScorer, uniform_weights


@torch.no_grad()
def base_errors(learner: nn.Module, problems: SineProblems) -> Tensor:
    """|f_θ(x*) − y*| without adaptation, shape ``[B]``."""
    return (learner(problems.x_target[:, None])[:, 0] - problems.y_target).abs()


def adapted_errors(
    learner: nn.Module, problems: SineProblems, x: Tensor, y: Tensor, weights: Tensor, *, inner_lr: float, num_steps: int
) -> Tensor:
    """|f_θ'(x*) − y*| after adapting on (x, y) with ``weights``, shape ``[B]`` (no graph kept)."""
    prediction = adapt_and_predict(learner, problems, x, y, weights.detach(), inner_lr=inner_lr, num_steps=num_steps)
    return (prediction.detach() - problems.y_target).abs()


def other_task_errors(
    learner: nn.Module, problems: SineProblems, *, num_examples: int, inner_lr: float, num_steps: int,
    generator: torch.Generator,
) -> Tensor:
    """Base TTT: adapt on ``num_examples`` real points of a random other sine task per problem."""
    others = sample_sine_tasks(len(problems), num_examples, 1, generator=generator, dtype=problems.x_target.dtype)
    x, y = others.x_support, others.y_support
    return adapted_errors(learner, problems, x, y, uniform_weights(x), inner_lr=inner_lr, num_steps=num_steps)


def synthetic_errors(
    learner: nn.Module,
    problems: SineProblems,
    generator_model: SineGenerator,
    scorer: SineScorer | None,
    *,
    num_examples: int,
    inner_lr: float,
    num_steps: int,
    generator: torch.Generator,
) -> Tensor:
    """Adapt on ``num_examples`` samples of ``generator_model``, weighted by ``scorer`` (None: uniform)."""
    with torch.no_grad():
        x, y = generator_model.sample(problems, num_examples, generator=generator)
        weights = uniform_weights(x) if scorer is None else scorer(problems, x, y)
    return adapted_errors(learner, problems, x, y, weights, inner_lr=inner_lr, num_steps=num_steps)
