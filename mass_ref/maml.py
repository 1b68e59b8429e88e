"""MAML on sine regression: the meta-objective, its training loop, the baselines and evaluation.

The MAML meta-objective over a batch of tasks τ with support S_τ and query Q_τ is

    L_meta(θ) = mean_τ  L_Q_τ( θ − α ∇_θ L_S_τ(θ) )        (one inner step; K steps unroll the same)

and its gradient flows through the inner update (second order), or around it (first order).
Two implementations give the same number: a per-task loop over the ``higher`` backend, and a
``torch.func.vmap`` over tasks of the ``torch.func`` backend.

Introduced in notebooks/01_maml_sine.ipynb.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mass_ref.inner import AdaptedModel, Forward, inner_adapt
from mass_ref.results import mean_ci95
from mass_ref.tasks.sine import SineTasks, sample_sine_tasks
from mass_ref.training import adam_train

MAML_IMPLEMENTATIONS = ("vmap", "higher_loop")
"""The two implementations of :func:`maml_loss` (its ``method``): one ``vmap`` over tasks, or a per-task loop
over the ``higher`` backend. Not to be confused with :data:`mass_ref.metagrad.META_GRADIENT_MODES` (how a
meta-gradient is computed through a long inner loop)."""


def sine_mlp(in_features: int = 1, hidden: Sequence[int] = (40, 40), *, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """The paper's regressor: ``in_features``-40-40-1 with ReLU (``in_features=3`` for the oracle)."""
    sizes = [in_features, *hidden]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out, dtype=dtype), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], 1, dtype=dtype))
    return nn.Sequential(*layers)


def mse_per_example(forward: Forward, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Squared error per point: ``batch = (x [n, d], y [n, 1])`` → ``[n]``."""
    x, y = batch
    return (forward(x) - y).pow(2).mean(-1)


def maml_loss(
    model: nn.Module,
    tasks: SineTasks,
    *,
    inner_lr: float,
    num_inner_steps: int = 1,
    first_order: bool = False,
    method: str = "vmap",
) -> Tensor:
    """L_meta: mean query MSE after adapting to each task's support set (a scalar tensor).

    ``method="vmap"`` adapts all tasks at once (torch.func backend); ``"higher_loop"`` adapts one
    task at a time with the higher backend. Both give the same value and gradient.
    """
    if method not in MAML_IMPLEMENTATIONS:
        raise ValueError(f"method must be one of {MAML_IMPLEMENTATIONS}; got {method!r}.")
    kwargs = dict(inner_lr=inner_lr, num_steps=num_inner_steps, first_order=first_order)

    def task_loss(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, backend: str) -> Tensor:
        adapted = inner_adapt(model, mse_per_example, (xs, ys), backend=backend, **kwargs)
        return mse_per_example(adapted, (xq, yq)).mean()

    data = (tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query)
    if method == "vmap":
        return torch.func.vmap(lambda *d: task_loss(*d, backend="torch.func"))(*data).mean()
    return torch.stack([task_loss(*d, backend="higher") for d in zip(*data)]).mean()


@dataclass
class LearningCurve:
    """Held-out query MSE after ``num_steps`` SGD steps (size ``inner_lr``) on each task's support set, recorded
    during meta-training (pass it to :func:`meta_train_maml`; record every ``every`` outer steps).

    Attributes:
        tasks: the held-out tasks (not the test tasks the final evaluation uses).
        inner_lr, num_steps: the test-time adaptation that is scored.
        every: outer steps between two evaluations (before the first step and after the last are recorded too).
        iterations: outer steps done at each evaluation. per_task: each evaluation's MSE per task, ``[T]``.
    """

    tasks: SineTasks
    inner_lr: float
    every: int
    num_steps: int = 1
    iterations: list[int] = field(default_factory=list)
    per_task: list[Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every must be a positive integer (outer steps between evaluations); got {self.every!r}.")

    def record(self, model: nn.Module, iteration: int) -> None:
        """Evaluate ``model`` now (``iteration`` outer steps done) and append the result."""
        curve = adaptation_curve(model, self.tasks, inner_lr=self.inner_lr, max_steps=self.num_steps)
        self.iterations.append(iteration)
        self.per_task.append(curve[:, self.num_steps])

    def summary(self) -> list[tuple[int, float, float]]:
        """``(iteration, mean MSE, 95% CI half-width over tasks)`` per evaluation (:func:`mean_ci95`)."""
        return [(it, *mean_ci95(errors)) for it, errors in zip(self.iterations, self.per_task)]


def meta_train_maml(
    model: nn.Module,
    *,
    iterations: int,
    meta_batch_size: int,
    k_shot: int,
    inner_lr: float,
    outer_lr: float,
    generator: torch.Generator,
    num_inner_steps: int = 1,
    first_order: bool = False,
    method: str = "vmap",
    progress: bool = True,
    lr_schedule: str = "constant",
    learning_curve: LearningCurve | None = None,
) -> list[float]:
    """Train θ by Adam on L_meta, sampling ``meta_batch_size`` fresh tasks (K support + K query) per step.

    ``lr_schedule`` (``"constant"`` or ``"cosine"``) sets Adam's step size over training, from ``outer_lr``
    (:func:`mass_ref.training.scheduled_lr`). A ``learning_curve`` records held-out post-adaptation MSE
    before the first step, every ``learning_curve.every`` steps and after the last one.
    Returns the meta-loss of every iteration.
    """
    dtype = next(model.parameters()).dtype

    def step_loss() -> Tensor:
        tasks = sample_sine_tasks(meta_batch_size, k_shot, k_shot, generator=generator, dtype=dtype)
        return maml_loss(
            model, tasks, inner_lr=inner_lr, num_inner_steps=num_inner_steps, first_order=first_order, method=method
        )

    def on_step(done: int) -> None:
        if learning_curve is not None and (done % learning_curve.every == 0 or done == iterations):
            learning_curve.record(model, done)

    desc = "first-order MAML" if first_order else "MAML"
    return adam_train(model, step_loss, iterations=iterations, lr=outer_lr, desc=desc, progress=progress,
                      lr_schedule=lr_schedule, on_step=on_step)


def oracle_inputs(x: Tensor, amplitude: Tensor, phase: Tensor) -> Tensor:
    """Concatenate (x, A, φ) per point: ``[T, N, 1]`` and ``[T]`` → ``[T, N, 3]``."""
    shape = x.shape
    return torch.cat([x, amplitude[:, None, None].expand(shape), phase[:, None, None].expand(shape)], dim=-1)


def pretrain_on_all_tasks(
    model: nn.Module,
    *,
    iterations: int,
    tasks_per_batch: int,
    k_shot: int,
    lr: float,
    generator: torch.Generator,
    oracle: bool = False,
    progress: bool = True,
) -> list[float]:
    """Plain regression on points pooled from random tasks (the paper's pretrained baseline).

    With ``oracle=True`` the model also sees each point's (A, φ) as inputs (the paper's oracle):
    the task is then identified, so its error is a floor for the adaptive methods.
    """
    dtype = next(model.parameters()).dtype

    def step_loss() -> Tensor:
        tasks = sample_sine_tasks(tasks_per_batch, k_shot, 1, generator=generator, dtype=dtype)
        x = oracle_inputs(tasks.x_support, tasks.amplitude, tasks.phase) if oracle else tasks.x_support
        return mse_per_example(model, (x.flatten(0, 1), tasks.y_support.flatten(0, 1))).mean()

    desc = "oracle" if oracle else "pretrained baseline"
    return adam_train(model, step_loss, iterations=iterations, lr=lr, desc=desc, progress=progress)


def adaptation_curve(model: nn.Module, tasks: SineTasks, *, inner_lr: float, max_steps: int) -> Tensor:
    """Query MSE of each task after 0, 1, ..., ``max_steps`` SGD steps on its support set.

    Returns a tensor of shape ``[T, max_steps + 1]`` (no graph). Tasks are adapted in parallel
    with ``vmap``; each step is one call of ``inner_adapt`` from the previous step's parameters.
    """
    start = {name: p.detach() for name, p in model.named_parameters()}

    def curve(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        adapted = AdaptedModel(model, start)
        errors = [mse_per_example(adapted, (xq, yq)).mean()]
        for _ in range(max_steps):
            adapted = inner_adapt(
                model, mse_per_example, (xs, ys), inner_lr=inner_lr, first_order=True,
                backend="torch.func", params=adapted.params,
            )
            errors.append(mse_per_example(adapted, (xq, yq)).mean())
        return torch.stack(errors)

    return torch.func.vmap(curve)(tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query).detach()


def tune_inner_lr(
    model: nn.Module, tasks: SineTasks, candidates: Sequence[float], *, max_steps: int
) -> tuple[float, dict[float, float]]:
    """The step size among ``candidates`` with the lowest query MSE averaged over steps 1..max_steps.

    Returns ``(best_lr, {lr: mean MSE})``; a step size that diverges scores ``inf``. Use
    validation tasks, not the held-out test tasks.
    """
    if not candidates:
        raise ValueError("candidates is empty; pass step sizes to try, e.g. [0.001, 0.01, 0.1].")
    scores = {}
    for lr in candidates:
        score = adaptation_curve(model, tasks, inner_lr=lr, max_steps=max_steps)[:, 1:].mean().item()
        scores[lr] = score if math.isfinite(score) else math.inf
    return min(scores, key=scores.__getitem__), scores


def time_meta_gradient(model: nn.Module, tasks: SineTasks, *, method: str, repeats: int, **loss_kwargs: Any) -> float:
    """Median wall-clock seconds of one meta-gradient (forward + backward of :func:`maml_loss`).

    One untimed warm-up call comes first.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss = maml_loss(model, tasks, method=method, **loss_kwargs)
        torch.autograd.grad(loss, params)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])
