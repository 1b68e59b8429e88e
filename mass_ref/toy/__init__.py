"""MASS in miniature (notebooks/03_mass_toy.ipynb): sine problems, generator, scorer, meta-training, and the
command line's ``toy_mass`` experiment (:mod:`mass_ref.toy.experiment`)."""

from mass_ref.checkpoint import fingerprint
from mass_ref.toy.base import base_state, build_toy_base, load_base_state
from mass_ref.toy.evaluate import adapted_errors, base_errors, other_task_errors, synthetic_errors
from mass_ref.toy.experiment import ToyRunConfig
from mass_ref.toy.generator import SineGenerator, pretrain_labeler
from mass_ref.toy.mass import (
    ToyMassConfig,
    adapt_and_predict,
    mass_meta_step,
    outer_losses,
    pathwise_outer_loss,
    synthetic_attributions,
    train_toy_mass,
    training_state,
)
from mass_ref.toy.problems import SineProblems, sample_sine_problems
from mass_ref.toy.scorer import SineScorer, uniform_weights

__all__ = [
    "SineGenerator",
    "SineProblems",
    "SineScorer",
    "ToyMassConfig",
    "ToyRunConfig",
    "adapt_and_predict",
    "adapted_errors",
    "base_errors",
    "base_state",
    "build_toy_base",
    "fingerprint",
    "load_base_state",
    "mass_meta_step",
    "other_task_errors",
    "outer_losses",
    "pathwise_outer_loss",
    "pretrain_labeler",
    "sample_sine_problems",
    "synthetic_attributions",
    "synthetic_errors",
    "train_toy_mass",
    "training_state",
    "uniform_weights",
]
