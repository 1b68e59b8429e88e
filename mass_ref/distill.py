"""Learning synthetic training examples by gradient descent through the inner loop (dataset distillation).

For every task τ of a batch, learn m synthetic examples D̃_τ = {(x̃_j, ỹ_j)}, j = 1..m, such that
K inner SGD steps on them fit the task's real target points T_τ:

    θ'_τ(D̃_τ) = θ − α ∇_θ (1/m) Σ_j ℓ(θ; x̃_j, ỹ_j)          (K steps unroll the same)
    min_{D̃_τ}  L_{T_τ}(θ'_τ(D̃_τ))                            (Wang et al. 2018, one fixed θ)

The meta-gradient ∂L_{T_τ}/∂(x̃, ỹ) flows through the inner update exactly as ∂L/∂w_i does in
:mod:`mass_ref.attribution`: the same differentiable inner loop, now differentiated with respect to
the data's *values* rather than its weights. All tasks are adapted at once with
``torch.func.vmap``; Adam updates every task's synthetic points independently (its per-coordinate
normalisation makes the 1/T of the mean over tasks immaterial).

Shapes: ``init = (x [T, m, d], y [T, m, 1])`` (the starting synthetic examples, e.g. m random real
points of each task); ``target = (x [T, N, d], y [T, N, 1])``; :func:`adapted_task_losses` returns
``[T]``.

Introduced in notebooks/02_metagradients_through_data.ipynb.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mass_ref.attribution import query_loss_after_adapting
from mass_ref.inner import LearningRate, PerExampleLoss
from mass_ref.training import adam_train

Batch = tuple[Tensor, Tensor]


@dataclass
class DistilledExamples:
    """The learned synthetic examples of T tasks.

    Attributes:
        inputs: x̃, shape ``[T, m, d]`` (equal to the initial inputs when they were not learned).
        targets: ỹ, shape ``[T, m, 1]``.
        history: the mean target loss over tasks after adapting, one value per Adam step, of the
            current iterate.
        best_history: the same for the per-task best examples so far (what is returned).
    """

    inputs: Tensor
    targets: Tensor
    history: list[float]
    best_history: list[float]

    @property
    def batch(self) -> Batch:
        """``(inputs, targets)``, ready for :func:`adapted_task_losses`."""
        return self.inputs, self.targets


def adapted_task_losses(
    model: nn.Module,
    loss_fn: PerExampleLoss,
    support: Batch,
    query: Batch,
    *,
    inner_lr: LearningRate,
    num_steps: int = 1,
    params: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Per-task query loss after adapting on each task's own support set: ``[T]``.

    ``support`` and ``query`` are ``(x [T, n, d], y [T, n, 1])`` pairs; the T inner loops run in
    one ``vmap`` (torch.func backend). The result is differentiable with respect to the support
    tensors, which is what :func:`distill_examples` descends on.

    Introduced in notebooks/02_metagradients_through_data.ipynb.
    """
    _check_paired_batches(support, query, "support", "query")

    def one_task(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        return query_loss_after_adapting(model, loss_fn, (xs, ys), (xq, yq), inner_lr=inner_lr,
                                         num_steps=num_steps, backend="torch.func", params=params)

    return torch.func.vmap(one_task)(*support, *query)


class _SyntheticExamples(nn.Module):
    """The learnable (x̃, ỹ) of every task, as parameters so that :func:`adam_train` can train them."""

    def __init__(self, inputs: Tensor, targets: Tensor, learn_inputs: bool) -> None:
        super().__init__()
        self.inputs = nn.Parameter(inputs.detach().clone(), requires_grad=learn_inputs)
        self.targets = nn.Parameter(targets.detach().clone())


def distill_examples(
    model: nn.Module,
    loss_fn: PerExampleLoss,
    init: Batch,
    target: Batch,
    *,
    inner_lr: LearningRate,
    num_steps: int = 1,
    iterations: int,
    lr: float = 0.05,
    learn_inputs: bool = True,
    progress: bool = True,
) -> DistilledExamples:
    """Learn m synthetic examples per task by Adam on L_{T_τ}(θ'_τ(D̃_τ)), through the inner loop.

    Args:
        model: the learner θ; it is not modified and receives no gradient.
        loss_fn: per-example loss, e.g. :func:`mass_ref.mse_per_example`.
        init: starting synthetic examples ``(x [T, m, d], y [T, m, 1])``.
        target: the real points each task's adapted model must fit, ``(x [T, N, d], y [T, N, 1])``.
        inner_lr: α of the inner SGD steps (as for :func:`mass_ref.inner_adapt`).
        num_steps: K inner steps on the synthetic examples.
        iterations: Adam steps on the synthetic examples (≥ 1).
        lr: Adam's step size.
        learn_inputs: also learn x̃ (else only the labels ỹ move).
        progress: show a progress bar.

    Returns:
        :class:`DistilledExamples` (detached tensors) with the loss history. For each task it holds
        the iterate with the lowest *target* loss seen during training (a per-task early stop that
        uses only the target points): Adam can overshoot on the sharp loss surface of a few tasks.

    Raises:
        ValueError: mismatched shapes in ``init``/``target``, or a bad ``iterations`` or ``lr``.

    Introduced in notebooks/02_metagradients_through_data.ipynb.
    """
    _check_paired_batches(init, target, "init", "target")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1; got {iterations!r}.")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive number (Adam's step size); got {lr!r}.")
    start = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    synthetic = _SyntheticExamples(*init, learn_inputs=learn_inputs)
    best_loss = torch.full(init[0].shape[:1], float("inf"), dtype=init[1].dtype, device=init[1].device)
    best_inputs, best_targets = init[0].detach().clone(), init[1].detach().clone()

    def task_losses() -> Tensor:
        return adapted_task_losses(model, loss_fn, (synthetic.inputs, synthetic.targets), target,
                                   inner_lr=inner_lr, num_steps=num_steps, params=start)

    def keep_the_best(losses: Tensor) -> None:
        # per task, the synthetic examples with the lowest target loss so far (Adam may overshoot on some tasks)
        better = losses < best_loss
        best_loss[better] = losses[better]
        best_inputs[better] = synthetic.inputs.detach()[better]
        best_targets[better] = synthetic.targets.detach()[better]

    best_history: list[float] = []

    def step_loss() -> Tensor:
        losses = task_losses()
        keep_the_best(losses.detach())
        best_history.append(best_loss.mean().item())
        return losses.mean()

    history = adam_train(synthetic, step_loss, iterations=iterations, lr=lr, desc="distilling", progress=progress)
    keep_the_best(task_losses().detach())  # the iterate after the last Adam step
    best_history[-1] = best_loss.mean().item()
    return DistilledExamples(best_inputs, best_targets, history, best_history)


def _check_paired_batches(first: Batch, second: Batch, first_name: str, second_name: str) -> None:
    _check_batch(first, first_name)
    _check_batch(second, second_name)
    if first[0].shape[0] != second[0].shape[0]:
        raise ValueError(f"{first_name} and {second_name} must hold the same number of tasks; got "
                         f"{first[0].shape[0]} and {second[0].shape[0]}.")


def _check_batch(batch: Batch, name: str) -> None:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)):
        raise ValueError(f"{name} must be a pair of tensors (x [T, n, d], y [T, n, 1]); got {type(batch).__name__}.")
    x, y = batch
    if x.ndim != 3 or y.ndim != 3 or x.shape[:2] != y.shape[:2]:
        raise ValueError(f"{name} must be (x [T, n, d], y [T, n, 1]) with matching T and n; got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}.")
