"""Sine-wave regression tasks (MAML, Finn et al. 2017, §5.1).

A task is y = A · sin(x − φ) with amplitude A ~ U[0.1, 5] and phase φ ~ U[0, π]; inputs
x ~ U[−5, 5]. Each task comes with K support points (to adapt on) and Q query points (to score).

Introduced in notebooks/01_maml_sine.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)


@dataclass(frozen=True)
class SineTasks:
    """A batch of T sine tasks.

    Attributes:
        amplitude: A, shape ``[T]``.
        phase: φ, shape ``[T]``.
        x_support, y_support: shape ``[T, K, 1]``.
        x_query, y_query: shape ``[T, Q, 1]``.
    """

    amplitude: Tensor
    phase: Tensor
    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor

    def __len__(self) -> int:
        return self.amplitude.shape[0]

    def __getitem__(self, index: int | slice) -> SineTasks:
        """Task(s) ``index`` as a (smaller) batch; an int keeps a leading dimension of 1."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return SineTasks(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


def sine_function(x: Tensor, amplitude: Tensor, phase: Tensor) -> Tensor:
    """y = A · sin(x − φ), with ``x`` of shape ``[T, N, 1]`` and A, φ of shape ``[T]``."""
    return amplitude[:, None, None] * torch.sin(x - phase[:, None, None])


def sample_sine_tasks(
    num_tasks: int,
    k_support: int,
    k_query: int,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> SineTasks:
    """Draw ``num_tasks`` tasks with ``k_support`` support and ``k_query`` query points each."""
    for name, value in (("num_tasks", num_tasks), ("k_support", k_support), ("k_query", k_query)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator, dtype=dtype)

    amplitude = uniform(*AMPLITUDE_RANGE, num_tasks)
    phase = uniform(*PHASE_RANGE, num_tasks)
    x_support = uniform(*X_RANGE, num_tasks, k_support, 1)
    x_query = uniform(*X_RANGE, num_tasks, k_query, 1)
    return SineTasks(
        amplitude=amplitude,
        phase=phase,
        x_support=x_support,
        y_support=sine_function(x_support, amplitude, phase),
        x_query=x_query,
        y_query=sine_function(x_query, amplitude, phase),
    )
