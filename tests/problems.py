"""Small differentiable problems shared by the test modules (not a test file)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

DTYPE = torch.float64
Batch = tuple[Tensor, Tensor]


def tanh_regression_problem(seed: int = 0, n: int = 6, *, scale: float = 1.0,
                            n_query: int = 10) -> tuple[nn.Module, Batch, Batch]:
    """A smooth (tanh) 1-8-1 regressor with N(0, scale²) weights, n support and ``n_query`` query points
    of y = sin(2x), in float64 (smooth, so finite differences are reliable)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(1, 8, dtype=DTYPE), nn.Tanh(), nn.Linear(8, 1, dtype=DTYPE))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=DTYPE))
    xs = torch.randn(n, 1, generator=g, dtype=DTYPE)
    xq = torch.randn(n_query, 1, generator=g, dtype=DTYPE)
    return model, (xs, torch.sin(2 * xs)), (xq, torch.sin(2 * xq))
