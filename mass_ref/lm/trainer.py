"""The LM meta-training loop: steps of :mod:`mass_ref.lm.mass`, checkpointed, resumable, data-parallel.

:func:`train_lm_mass` runs ``steps`` MASS meta-steps (or Solver-GRPO steps). Problems and sampling
seeds depend only on ``(seed, step)``, so a resumed run draws exactly what an uninterrupted one
would. Under a launcher (see :mod:`mass_ref.distributed`) every rank calls it with the same
arguments and its :class:`~mass_ref.distributed.DataParallel`: each rank takes its share of the
step's problems, gradients are averaged before every optimiser step, rank 0 writes the checkpoint.

Introduced in notebooks/05_mass_llm.ipynb (data parallel and bf16: notebooks/07_mass_gpu.ipynb).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict
from os import PathLike
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mass_ref.checkpoint import resumable_loop
from mass_ref.distributed import DataParallel
from mass_ref.lm.formats import PromptFormat
from mass_ref.lm.amp import autocast
from mass_ref.lm.mass import LMMassConfig, lm_meta_step, solver_grpo_step
from mass_ref.lm.models import lora_parameters
from mass_ref.lm.scorer import LMScorer

__all__ = ["train_lm_mass"]


def train_lm_mass(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    scorer: LMScorer | None,
    config: LMMassConfig,
    problems_for_step: Callable[[int], Sequence[Any]],
    *,
    steps: int,
    seed: int,
    checkpoint_path: str | PathLike[str] | None = None,
    checkpoint_every: int = 10,
    stop_after: int | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[list[dict[str, float]]], None] | None = None,
    parallel: DataParallel | None = None,
) -> list[dict[str, float]]:
    """Meta-train (``method="mass"``) or RL-train (``"solver_grpo"``) the LoRA tensors φ and scorer η in place.

    ``problems_for_step(t)`` gives the training problems of step t (a pure function of t). With
    ``checkpoint_path`` the LoRA tensors, the scorer, the optimisers and the history are saved
    every ``checkpoint_every`` steps and at the end; the same call resumes from the checkpoint and
    reaches the same final state as an uninterrupted run (:func:`~mass_ref.checkpoint.resumable_loop`).
    "The same call" includes the starting models: the checkpoint records a
    :func:`~mass_ref.checkpoint.fingerprint` of the model (base weights and LoRA tensors) and the
    scorer as they were passed in, and a resume from other ones is refused (resume with a fresh copy
    of the starting model, as a new process would). ``stop_after`` stops early on purpose.
    ``parallel``: this process's rank (None: a single process); data parallelism needs
    ``config.per_problem_seeds`` and a ``meta_batch_size`` divisible by the number of ranks.

    Returns:
        One dict of diagnostics per step (see :func:`~mass_ref.lm.mass.lm_meta_step`,
        :func:`~mass_ref.lm.mass.solver_grpo_step`), averaged over the ranks.
    """
    parallel = parallel or DataParallel()
    if config.method == "mass" and config.train_scorer and scorer is None:
        raise ValueError("config.train_scorer is True but scorer is None; pass an LMScorer or set train_scorer=False.")
    if parallel.world_size > 1:
        parallel.check_batch(config.meta_batch_size)
        if not config.per_problem_seeds:
            raise ValueError("data-parallel training needs per_problem_seeds=True (else a rank's samples depend on "
                             "the other ranks' problems); set it in the config.")
    lora = lora_parameters(model)
    if not lora:
        raise ValueError("the model has no LoRA tensors; wrap it with add_lora(model) first.")
    device = next(iter(lora.values())).device
    optimizers: dict[str, torch.optim.Optimizer] = {
        "generator": torch.optim.Adam(list(lora.values()), lr=config.generator_lr)}
    if scorer is not None:
        optimizers["scorer"] = torch.optim.Adam(scorer.parameters(), lr=config.scorer_lr)

    def state() -> dict[str, Any]:
        return {"lora": {name: t.detach().cpu().clone() for name, t in lora.items()},
                "scorer": None if scorer is None else scorer.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()}}

    def restore(saved: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, tensor in lora.items():
                tensor.copy_(saved["lora"][name])
        if scorer is not None:
            scorer.load_state_dict(saved["scorer"])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(saved["optimizers"][name])

    def step(t: int) -> dict[str, float]:
        first_index, problems = parallel.shard(problems_for_step(t))
        options = dict(seed=seed * 1_000_003 + t, first_index=first_index,
                       average_gradients=parallel.average_gradients if parallel.world_size > 1 else None)
        with autocast(config.precision, device):
            if config.method == "solver_grpo":
                diagnostics = solver_grpo_step(model, tokenizer, fmt, problems, config, optimizers, **options)
            else:
                diagnostics = lm_meta_step(model, tokenizer, fmt, scorer, problems, config, optimizers, **options)
        return parallel.mean_over_ranks(diagnostics)

    starting_models = (model, *([] if scorer is None else [scorer]))  # base weights, initial LoRA, initial scorer
    label = "Solver GRPO" if config.method == "solver_grpo" else f"MASS ({config.outer_mode})"
    return resumable_loop(
        step, steps=steps, config=asdict(config), seed=seed, starting_models=starting_models, training_state=state,
        restore=restore, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every, stop_after=stop_after,
        progress=progress, desc=label, on_checkpoint=on_checkpoint, parallel=parallel)
