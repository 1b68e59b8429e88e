"""The plain training loop every chapter reuses: Adam on a loss that draws its own minibatch.

:func:`adam_train` minimises ``step_loss()`` for a fixed number of iterations,

    θ ← Adam(θ, ∇_θ step_loss(θ)),   one fresh minibatch per call of ``step_loss``,

and returns the loss of every iteration. It trains MAML's meta-objective and the pretrained
baselines (chapter 1), distilled examples (chapter 2), the toy generator's labeller (chapter 3) and
the tiny LM's pretraining (chapter 4). A core module, so that the chapters' code depends on it and
not on each other.

Introduced in notebooks/01_maml_sine.ipynb.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm import tqdm

__all__ = ["adam_train"]


def adam_train(
    model: nn.Module, step_loss: Callable[[], Tensor], *, iterations: int, lr: float, desc: str, progress: bool = True
) -> list[float]:
    """Minimise ``step_loss()`` (a fresh minibatch each call) with Adam on ``model.parameters()``.

    Args:
        model: whose parameters Adam updates in place.
        step_loss: returns a scalar loss tensor; called once per iteration.
        iterations: how many Adam steps.
        lr: Adam's step size.
        desc: the progress bar's label (its postfix shows the mean loss of the last 200 iterations).
        progress: show the progress bar.

    Returns:
        The loss of every iteration (``iterations`` floats).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[float] = []
    bar = tqdm(range(iterations), desc=desc, disable=not progress, mininterval=5.0)
    for it in bar:
        loss = step_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if it % 200 == 199:
            bar.set_postfix(loss=f"{statistics.fmean(history[-200:]):.3f}", refresh=False)
    return history
