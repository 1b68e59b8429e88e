"""The scorer s_η(T, x_i, y_i): a learned data-attribution module that weighs each synthetic example.

    s_i = (4 / m) · sigmoid(h_η(T, x_i, y_i) − log 3)  ∈ (0, 4/m)

where h_η is an MLP of the statement (x*, A, φ), the example (x_i, y_i) and its offset x_i − x*.
The last layer starts at zero, so an untrained scorer gives every example the uniform weight 1/m
and the weighted inner loss Σ_i s_i ℓ_i starts as the plain mean. Weights are not normalised: the
scorer may learn to take a larger (up to 4×) or smaller step on an example than plain SFT would.

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mass_ref.toy.problems import SineProblems


class SineScorer(nn.Module):
    """s_η: ``(problems, x [B, m, 1], y [B, m, 1]) → weights [B, m]``."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, problems: SineProblems, x: Tensor, y: Tensor) -> Tensor:
        m = x.shape[1]
        statement = problems.statement()[:, None, :].expand(-1, m, 3)
        offset = x - problems.x_target[:, None, None]
        features = torch.cat([statement, x / 5, y / 5, offset / 5], dim=-1)
        return 4.0 / m * torch.sigmoid(self.net(features) - math.log(3.0))[..., 0]


def uniform_weights(x: Tensor) -> Tensor:
    """The scorer-free weights 1/m, shape ``[B, m]`` for ``x`` of shape ``[B, m, 1]``."""
    return torch.full(x.shape[:2], 1.0 / x.shape[1], dtype=x.dtype)
