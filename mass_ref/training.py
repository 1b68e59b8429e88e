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

import math
import statistics
from collections.abc import Callable

import torch
from torch import Tensor, nn
from mass_ref.progress import progress_bar

__all__ = ["LR_SCHEDULES", "adam_train", "scheduled_lr"]

LR_SCHEDULES = ("constant", "cosine")
"""Adam step-size schedules of :func:`adam_train`: ``constant`` (lr throughout) or ``cosine``
(lr · ½(1 + cos(π t / T)) at step t of T: from lr down to 0 at the last step)."""


def scheduled_lr(lr: float, step: int, iterations: int, schedule: str = "constant") -> float:
    """The step size of ``schedule`` (one of :data:`LR_SCHEDULES`) at step ``step`` (0-based) of ``iterations``."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}; got {schedule!r}.")
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * step / iterations))


def adam_train(
    model: nn.Module,
    step_loss: Callable[[], Tensor],
    *,
    iterations: int,
    lr: float,
    desc: str,
    progress: bool = True,
    lr_schedule: str = "constant",
    on_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Minimise ``step_loss()`` (a fresh minibatch each call) with Adam on ``model.parameters()``.

    Args:
        model: whose parameters Adam updates in place.
        step_loss: returns a scalar loss tensor; called once per iteration.
        iterations: how many Adam steps.
        lr: Adam's step size.
        desc: the progress bar's label (its postfix shows the mean loss of the last 200 iterations).
        progress: show the progress bar.
        lr_schedule: ``"constant"`` or ``"cosine"`` (:func:`scheduled_lr`; the peak is ``lr``).
        on_step: called with the number of steps done: once with 0 before the first step, then after each
            step with 1, ..., ``iterations`` (e.g. to evaluate the model now and then).

    Returns:
        The loss of every iteration (``iterations`` floats).
    """
    scheduled_lr(lr, 0, max(iterations, 1), lr_schedule)  # validates the schedule's name
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[float] = []
    if on_step is not None:
        on_step(0)
    bar = progress_bar(range(iterations), enabled=progress, desc=desc, mininterval=5.0)
    for it in bar:
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(lr, it, iterations, lr_schedule)
        loss = step_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if on_step is not None:
            on_step(it + 1)
        if it % 200 == 199:
            bar.set_postfix(loss=f"{statistics.fmean(history[-200:]):.3f}", refresh=False)
    return history
