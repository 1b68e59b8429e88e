"""The "pretrained" parts of toy MASS: a MAML-trained learner and a generator whose labeller has a gap.

    learner   = MAML on sine tasks (K support points, one inner SGD step of size α)   — the base model θ
    generator = SineGenerator with ŷ_ψ fitted to A sin(x − φ) on x ∈ [−5, 0] only     — its knowledge ψ

Both come from one seeded stream, so the same seed and sizes give the same base models; the
notebook and the command line build them with this one function.

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

import torch
from torch import nn

from mass_ref.maml import meta_train_maml, sine_mlp
from mass_ref.results import seed_everything
from mass_ref.toy.generator import SineGenerator, pretrain_labeler


def build_toy_base(
    seed: int,
    *,
    learner_iterations: int,
    labeler_iterations: int,
    k_shot: int = 6,
    inner_lr: float = 0.01,
    labeler_range: tuple[float, float] = (-5.0, 0.0),
    progress: bool = True,
) -> tuple[nn.Module, SineGenerator]:
    """Return ``(learner, generator_model)``: MAML for ``learner_iterations`` steps (25 tasks per step,
    ``k_shot`` points, Adam 1e-3), then the labeller for ``labeler_iterations`` steps on ``labeler_range``."""
    generator = seed_everything(seed)
    learner = sine_mlp()
    meta_train_maml(learner, iterations=learner_iterations, meta_batch_size=25, k_shot=k_shot, inner_lr=inner_lr,
                    outer_lr=1e-3, generator=generator, progress=progress)
    generator_model = SineGenerator()
    pretrain_labeler(generator_model, iterations=labeler_iterations, batch_size=64, lr=1e-3, generator=generator,
                     x_range=labeler_range, progress=progress)
    return learner, generator_model


def base_state(learner: nn.Module, generator_model: SineGenerator) -> dict[str, dict[str, torch.Tensor]]:
    """State dicts of both base models (what the command line caches in ``<output_dir>/base.pt``)."""
    return {"learner": learner.state_dict(), "generator": generator_model.state_dict()}


def load_base_state(state: dict[str, dict[str, torch.Tensor]]) -> tuple[nn.Module, SineGenerator]:
    """Rebuild ``(learner, generator_model)`` from :func:`base_state`."""
    learner, generator_model = sine_mlp(), SineGenerator()
    learner.load_state_dict(state["learner"])
    generator_model.load_state_dict(state["generator"])
    return learner, generator_model
