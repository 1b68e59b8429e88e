"""mass-ref: a notebook-first reference implementation of MASS (test-time meta-adaptation with
self-synthesis, Kaya & Rui, ICLR 2026).

The public API, grouped by the notebook that introduces it:

* 01 MAML on sine: :func:`inner_adapt` (the differentiable inner loop, backends ``higher`` and
  ``torch.func``; the latter runs :func:`sgd_trajectory`, the one K-step SGD kernel), the sine
  task family, MAML training, baselines and evaluation; profiles, seeds and results files.
* 02 Meta-gradients through data: :func:`example_attributions` (∂L_outer/∂w_i through the inner
  loop), its first-order approximation, leave-one-out re-adaptation, and :func:`distill_examples`
  (synthetic examples learned through the inner loop).
* 03 MASS in miniature: the subpackage :mod:`mass_ref.toy` (generator, scorer, attribution rewards,
  gold and verifier outer losses, resumable meta-training), GRPO's advantages and clipped loss,
  and checkpoints (:func:`resumable_loop`, shared with the LM trainer); run configs for the command line
  (``python -m mass_ref train|evaluate``): :class:`ToyRunConfig`, and :class:`LMRunConfig` (loaded from
  :mod:`mass_ref.lm` on first access).
* 04–05, 07 Language models: the subpackage :mod:`mass_ref.lm` (import it explicitly: it loads
  transformers and peft).
* 06 Scalable meta-gradients: :func:`weight_meta_gradient`, the inner loop's meta-gradient by full
  unroll, per-step recomputation, forward-over-reverse products, or first-order/truncated approximations.
* 07 MASS on a GPU and many processes: :class:`DataParallel` and :func:`data_parallel_from_env`
  (ranks under ``torchrun``/``accelerate launch`` split each batch and average gradients).
"""

from mass_ref.attribution import (
    alignment_attributions,
    example_attributions,
    leave_one_out_changes,
    query_loss_after_adapting,
)
from mass_ref import toy
from mass_ref.checkpoint import (UnreadableCheckpointError, fingerprint, load_checkpoint, resumable_loop,
                                 save_checkpoint)
from mass_ref.config import ConfigError, config_file, input_path, load_config, parse_config, shipped_configs
from mass_ref.distill import DistilledExamples, adapted_task_losses, distill_examples
from mass_ref.grpo import clipped_policy_loss, group_advantages
from mass_ref.inner import (BACKENDS, AdaptedModel, NonFiniteError, Trajectory, inner_adapt, inner_loss_of,
                            sgd_trajectory, weighted_inner_loss)
from mass_ref.stats import roc_auc, spearman
from mass_ref.distributed import DataParallel, data_parallel_from_env, local_device
from mass_ref.metagrad import META_GRADIENT_MODES, MetaGradient, check_meta_gradient_mode, weight_meta_gradient
from mass_ref.maml import (
    MAML_IMPLEMENTATIONS,
    LearningCurve,
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
from mass_ref.profiles import (
    LARGE_CARD_GIB,
    PROFILES,
    AttributionSizes,
    MamlSineSizes,
    MassGpuSizes,
    MassToySizes,
    ScalableMetaGradSizes,
    check_profile_fits_machine,
    cuda_memory_gib,
    profile_sizes,
    resolve_profile,
    runtime_estimate,
)
from mass_ref.results import (
    figure_path,
    load_results,
    mean_ci95,
    project_root,
    results_path,
    run_directory,
    save_figure,
    save_results,
    seed_everything,
)
from mass_ref.run_folder import AtomicWriteError, RunFolderInUse
from mass_ref.tasks.sine import SineTasks, sample_sine_tasks, sine_function
from mass_ref.toy.experiment import ToyRunConfig
from mass_ref.training import adam_train

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``mass_ref.LMRunConfig`` imports :mod:`mass_ref.lm` (transformers, peft) only when it is first used."""
    if name == "LMRunConfig":
        from mass_ref.lm.run_config import LMRunConfig

        return LMRunConfig
    raise AttributeError(f"module 'mass_ref' has no attribute {name!r}")


__all__ = [
    "runtime_estimate",
    "config_file",
    "input_path",
    "shipped_configs",
    "AtomicWriteError",
    "NonFiniteError",
    "RunFolderInUse",
    "UnreadableCheckpointError",
    "save_figure",
    "AdaptedModel",
    "AttributionSizes",
    "ConfigError",
    "BACKENDS",
    "DistilledExamples",
    "MAML_IMPLEMENTATIONS",
    "META_GRADIENT_MODES",
    "MamlSineSizes",
    "MetaGradient",
    "MassGpuSizes",
    "MassToySizes",
    "ScalableMetaGradSizes",
    "LMRunConfig",
    "ToyRunConfig",
    "DataParallel",
    "LARGE_CARD_GIB",
    "PROFILES",
    "SineTasks",
    "adam_train",
    "LearningCurve",
    "adaptation_curve",
    "adapted_task_losses",
    "alignment_attributions",
    "check_meta_gradient_mode",
    "clipped_policy_loss",
    "data_parallel_from_env",
    "distill_examples",
    "example_attributions",
    "figure_path",
    "fingerprint",
    "group_advantages",
    "inner_adapt",
    "inner_loss_of",
    "leave_one_out_changes",
    "load_checkpoint",
    "load_config",
    "load_results",
    "local_device",
    "maml_loss",
    "mean_ci95",
    "meta_train_maml",
    "mse_per_example",
    "oracle_inputs",
    "parse_config",
    "pretrain_on_all_tasks",
    "check_profile_fits_machine",
    "cuda_memory_gib",
    "profile_sizes",
    "project_root",
    "query_loss_after_adapting",
    "resolve_profile",
    "resumable_loop",
    "results_path",
    "roc_auc",
    "run_directory",
    "sample_sine_tasks",
    "save_checkpoint",
    "save_results",
    "seed_everything",
    "sine_function",
    "sine_mlp",
    "sgd_trajectory",
    "spearman",
    "time_meta_gradient",
    "toy",
    "tune_inner_lr",
    "weight_meta_gradient",
    "Trajectory",
    "weighted_inner_loss",
]
