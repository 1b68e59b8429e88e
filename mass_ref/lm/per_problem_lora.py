"""Many problems' adapted LoRA states in one batch: each batch row runs with its own problem's φ'.

Test-time training gives every problem its own adapted LoRA tensors φ'_p, so a plain peft model has to
update, answer and score one problem at a time: one small forward and backward, then a greedy decode of
batch size 1. On a small model that is mostly per-call overhead. Here the LoRA tensors are *stacked*,
``{name: Tensor[P, *shape]}`` (one slice per problem), and row b of a batch uses slice ``rows[b]``:

    lora_A(x)_b = x_b A_{rows[b]}ᵀ,     lora_B(h)_b = h_b B_{rows[b]}ᵀ      (peft then scales by α/r)

so one forward serves P problems. Because problem p's loss only reaches slice p, one gradient of the
summed loss Σ_p Σ_i w_pi ℓ_pi(φ_p) is every problem's own gradient at once, and a step of the package's
one inner-loop kernel (:func:`mass_ref.inner.sgd_trajectory`) on the stack is P independent test-time
updates (:func:`sgd_per_problem`). The results equal one problem at a time up to float rounding
(other matrix shapes sum in another order); ``tests/test_per_problem_lora.py`` checks both.

:func:`per_problem_lora` installs forward hooks on the LoRA ``nn.Linear`` modules of a peft model for
the ``with`` block; the model's own tensors are never changed.

Introduced in notebooks/05_mass_llm.ipynb (its evaluation answers all problems this way).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from mass_ref.inner import check_weights, sgd_trajectory, weighted_inner_loss
from mass_ref.lm.generate import eval_mode
from mass_ref.lm.models import lora_parameters
from mass_ref.lm.sft import SFTBatch, sft_losses_per_example

__all__ = ["PerProblemLoRA", "per_problem_lora", "sgd_per_problem", "stack_lora"]

Stacked = dict[str, Tensor]
"""``{name: Tensor[P, *shape]}``: one LoRA state per problem, named as in :func:`~mass_ref.lm.models.lora_parameters`."""


class PerProblemLoRA:
    """The hooks' state: which stacked LoRA tensors the next forward uses, and which slice each row takes.

    Set it with :meth:`use` before a forward; a forward whose batch size differs from ``len(rows)`` raises.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.stacked: Mapping[str, Tensor] | None = None
        self.rows: Tensor | None = None

    def use(self, stacked: Mapping[str, Tensor], rows: Tensor | Sequence[int]) -> None:
        """Run the next forwards with ``stacked`` (``{name: [P, *shape]}``, every LoRA tensor), row b with slice
        ``rows[b]``."""
        missing = sorted(set(self.names) - set(stacked))
        if missing:
            raise ValueError(f"stacked LoRA state lacks {missing[:3]} ({len(missing)} names); pass one stacked "
                             "tensor per name of lora_parameters(model) (stack_lora builds them).")
        self.stacked = stacked
        device = next(iter(stacked.values())).device
        self.rows = torch.as_tensor(rows, dtype=torch.long, device=device)

    def _output(self, name: str, x: Tensor) -> Tensor:
        if self.stacked is None or self.rows is None:
            raise RuntimeError("per_problem_lora: call .use(stacked, rows) before running the model.")
        if x.shape[0] != self.rows.shape[0]:
            raise ValueError(f"a batch of {x.shape[0]} rows ran with rows for {self.rows.shape[0]}; pass one "
                             "problem index per batch row to .use().")
        weight = self.stacked[name][self.rows]  # [B, out, in]: row b's own matrix
        return torch.einsum("b...i,boi->b...o", x.to(weight.dtype), weight)


def stack_lora(states: Sequence[Mapping[str, Tensor]]) -> Stacked:
    """``[{name: Tensor[*shape]}] * P → {name: Tensor[P, *shape]}`` (a copy, detached)."""
    if not states:
        raise ValueError("states is empty; pass at least one LoRA state.")
    return {name: torch.stack([s[name].detach() for s in states]) for name in states[0]}


@contextlib.contextmanager
def per_problem_lora(model: nn.Module) -> Iterator[PerProblemLoRA]:
    """Within the ``with`` block every LoRA linear map of ``model`` runs row b with ``stacked[name][rows[b]]``.

    Yields the :class:`PerProblemLoRA` whose :meth:`~PerProblemLoRA.use` sets the stacked state and rows. The
    hooks replace each LoRA ``nn.Linear``'s output (its own weight's output is computed and dropped: r × d, small
    beside the base layer); they are removed on exit, also on an exception.

    Raises:
        ValueError: ``model`` has no LoRA tensors, or one that is not the weight of an ``nn.Linear`` (e.g. LoRA on
            an embedding), which this batching does not support.
    """
    lora = lora_parameters(model)
    if not lora:
        raise ValueError("the model has no trainable LoRA tensors; wrap it with add_lora first.")
    modules = {f"{name}.weight": module for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and f"{name}.weight" in lora}
    unsupported = sorted(set(lora) - set(modules))
    if unsupported:
        raise ValueError(f"LoRA tensors {unsupported[:3]} are not nn.Linear weights; per-problem batching supports "
                         "LoRA on linear layers only (peft's default); answer one problem at a time instead.")
    state = PerProblemLoRA(list(lora))

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
            return state._output(name, args[0])
        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    try:
        yield state
    finally:
        for handle in handles:
            handle.remove()


def sgd_per_problem(
    model: nn.Module,
    batch: SFTBatch,
    rows: Sequence[int],
    *,
    num_problems: int,
    num_steps: int,
    lr: float,
    weights: Tensor | None = None,
) -> Stacked:
    """K plain SGD steps on each problem's own examples, all problems in one batch: returns φ'_p stacked.

    Implements φ_p ← φ_p − α ∇_{φ_p} Σ_{i: rows[i] = p} w_i ℓ_i(φ_p) for p = 0..P−1, every φ_p starting at the
    model's LoRA tensors, as :func:`mass_ref.inner.sgd_trajectory` steps on the stack (the gradient of the summed
    loss w.r.t. slice p is problem p's own; nothing is written into the model).

    Args:
        model: a peft model; its LoRA tensors are φ_0 for every problem.
        batch: the n examples of all problems, one :class:`~mass_ref.lm.sft.SFTBatch`.
        rows: n problem indices in ``[0, num_problems)``: example i belongs to problem ``rows[i]``.
        num_problems: P (every problem should own at least one example, or its slice stays φ_0).
        num_steps: K ≥ 0.
        lr: α > 0.
        weights: ``[n]`` w_i (each problem's weights as :func:`~mass_ref.lm.ttt.lora_sft_steps` takes them); None
            gives every problem the mean of its own examples, 1/m_p.

    Returns:
        ``{name: Tensor[P, *shape]}``, detached.
    """
    lora = lora_parameters(model)
    device = next(iter(lora.values())).device
    index = torch.as_tensor(list(rows), dtype=torch.long, device=device)
    if index.numel() != len(batch):
        raise ValueError(f"rows has {index.numel()} entries for a batch of {len(batch)} examples; pass one problem "
                         "index per example.")
    if index.numel() and not 0 <= int(index.min()) <= int(index.max()) < num_problems:
        raise ValueError(f"rows holds indices outside [0, {num_problems}); num_problems must exceed every index.")
    dtype = next(iter(lora.values())).dtype
    if weights is None:
        weights = 1.0 / torch.bincount(index, minlength=num_problems).to(dtype)[index]
    else:
        weights = torch.as_tensor(weights).detach().to(device=device, dtype=dtype)
        if weights.shape != (len(batch),):
            raise ValueError(f"weights has shape {tuple(weights.shape)}; pass one weight per example, shape "
                             f"({len(batch)},).")
        check_weights(weights)
    start = {name: p.detach().unsqueeze(0).expand(num_problems, *p.shape).clone() for name, p in lora.items()}
    batch = batch.to(device)
    with per_problem_lora(model) as state, eval_mode(model):  # eval: no dropout, deterministic steps

        def inner_loss(stacked: Mapping[str, Tensor]) -> Tensor:
            state.use(stacked, index)
            return weighted_inner_loss(sft_losses_per_example(model, batch), weights)

        trajectory = sgd_trajectory(inner_loss, start, inner_lr=lr, num_steps=num_steps, differentiable=False)
    return trajectory.params[-1]
