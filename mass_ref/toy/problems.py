"""Target problems for MASS in miniature: "what is y at x* for this sine wave?"

A problem T is a sine task (A, φ) — its *statement*, which the generator and scorer can read —
and a target input x* ~ U[−5, 5]; its answer is y* = A sin(x* − φ). The learner is a regressor
of x alone: it cannot read the statement, so to answer well it must first adapt on data.

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mass_ref.tasks.sine import AMPLITUDE_RANGE, PHASE_RANGE, X_RANGE, sine_function


@dataclass(frozen=True)
class SineProblems:
    """A batch of B target problems.

    Attributes:
        amplitude, phase: the statement (A, φ), shape ``[B]``.
        x_target: x*, shape ``[B]``.
        y_target: y* = A sin(x* − φ), shape ``[B]``.
    """

    amplitude: Tensor
    phase: Tensor
    x_target: Tensor
    y_target: Tensor

    def __len__(self) -> int:
        return self.amplitude.shape[0]

    def __getitem__(self, index: slice) -> SineProblems:
        return SineProblems(self.amplitude[index], self.phase[index], self.x_target[index], self.y_target[index])

    def statement(self) -> Tensor:
        """Features of T that generator and scorer read: (x*/5, A/5, φ/π), shape ``[B, 3]``."""
        return torch.stack([self.x_target / 5, self.amplitude / 5, self.phase / torch.pi], dim=-1)

    def true_labels(self, x: Tensor) -> Tensor:
        """A sin(x − φ) for per-problem inputs ``x`` of shape ``[B, m, 1]``."""
        return sine_function(x, self.amplitude, self.phase)


def sample_sine_problems(num_problems: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> SineProblems:
    """Draw ``num_problems`` problems: A ~ U[0.1, 5], φ ~ U[0, π], x* ~ U[−5, 5]."""
    if not isinstance(num_problems, int) or num_problems < 1:
        raise ValueError(f"num_problems must be a positive integer; got {num_problems!r}.")

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(num_problems, generator=generator, dtype=dtype)

    amplitude, phase, x_target = uniform(*AMPLITUDE_RANGE), uniform(*PHASE_RANGE), uniform(*X_RANGE)
    return SineProblems(amplitude, phase, x_target, amplitude * torch.sin(x_target - phase))
