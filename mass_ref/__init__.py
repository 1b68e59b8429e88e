"""mass-ref: a notebook-first reference implementation of MASS (test-time meta-adaptation with
self-synthesis, Kaya & Rui, ICLR 2026).

The public API, grouped by the notebook that introduces it:

* 01 MAML on sine: :func:`inner_adapt` (the differentiable inner loop, backends ``higher`` and
  ``torch.func``), the sine task family, MAML training, baselines and evaluation; profiles, seeds
  and results files.
"""

from mass_ref.inner import BACKENDS, AdaptedModel, inner_adapt, weighted_inner_loss
from mass_ref.maml import (
    adam_train,
    adaptation_curve,
    maml_loss,
    meta_train_maml,
    mse_per_example,
    oracle_inputs,
    pretrain_on_all_tasks,
    sine_mlp,
    time_meta_gradient,
    tune_inner_lr,
)
from mass_ref.profiles import PROFILES, MamlSineSizes, profile_sizes, resolve_profile
from mass_ref.results import (
    figure_path,
    load_results,
    mean_ci95,
    project_root,
    results_path,
    save_results,
    seed_everything,
)
from mass_ref.tasks.sine import SineTasks, sample_sine_tasks, sine_function

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "PROFILES",
    "AdaptedModel",
    "MamlSineSizes",
    "SineTasks",
    "adam_train",
    "adaptation_curve",
    "figure_path",
    "inner_adapt",
    "load_results",
    "maml_loss",
    "mean_ci95",
    "meta_train_maml",
    "mse_per_example",
    "oracle_inputs",
    "pretrain_on_all_tasks",
    "profile_sizes",
    "project_root",
    "resolve_profile",
    "results_path",
    "sample_sine_tasks",
    "save_results",
    "seed_everything",
    "sine_function",
    "sine_mlp",
    "time_meta_gradient",
    "tune_inner_lr",
    "weighted_inner_loss",
]
