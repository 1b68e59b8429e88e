"""The worked solutions of chapter 3's exercises agree with the package."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mass_ref.grpo import group_advantages
from mass_ref.toy import SineProblems, ToyMassConfig, synthetic_attributions
from solutions.ch03 import group_advantages_numpy, one_step_attribution


def test_one_step_attribution_matches_the_package() -> None:
    theta, alpha, s = 0.7, 0.05, [0.2, 0.5, 0.3]
    xs, ys, x_star, y_star = [1.0, -2.0, 0.5], [2.0, 1.0, -1.0], 1.5, 0.4
    line = nn.Linear(1, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        line.weight.fill_(theta)
    f64 = dict(dtype=torch.float64)
    problem = SineProblems(torch.ones(1, **f64), torch.zeros(1, **f64), torch.tensor([x_star], **f64),
                           torch.tensor([y_star], **f64))
    weights = torch.tensor([s], **f64, requires_grad=True)
    _, _, g = synthetic_attributions(line, problem, torch.tensor(xs, **f64).view(1, 3, 1),
                                     torch.tensor(ys, **f64).view(1, 3, 1), weights,
                                     ToyMassConfig(num_inner_steps=1, inner_lr=alpha), generator=torch.Generator())
    assert np.allclose(g[0].numpy(), one_step_attribution(theta, alpha, s, xs, ys, x_star, y_star), rtol=1e-12)


def test_numpy_advantages_match_the_package() -> None:
    rewards = np.random.default_rng(0).normal(size=(5, 8))
    assert np.allclose(group_advantages_numpy(rewards), group_advantages(torch.tensor(rewards)).numpy(), atol=1e-9)
