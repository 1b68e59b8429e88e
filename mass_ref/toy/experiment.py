"""The toy experiment (``experiment: toy_mass``): its run config and its train/evaluate commands.

    python -m mass_ref train    --config configs/toy_mass_gold.yaml   # progress bar, checkpoints, metrics.jsonl
    python -m mass_ref evaluate --config configs/toy_mass_gold.yaml   # held-out errors -> eval.json

:class:`ToyRunConfig` is what a ``toy_mass`` file holds; :func:`train` builds (or reloads) the
pretrained parts into ``output_dir/base.pt`` and meta-trains with
:func:`~mass_ref.toy.mass.train_toy_mass` into ``output_dir/checkpoint.pt`` (generator, scorer,
optimisers, RNG, history), resuming where a killed run stopped; :func:`evaluate` compares Base,
TT-SS and the trained run on held-out problems under the same test-time budget, with the sampling
streams notebook 03 uses for the same seed. Registered in :data:`mass_ref.config.EXPERIMENTS`.

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mass_ref.checkpoint import load_checkpoint, save_checkpoint
from mass_ref.config import ConfigError, EvaluateSection, ExperimentConfig, check_positive_int
from mass_ref.inner import NonFiniteError
from mass_ref.results import mean_ci95
from mass_ref.run_folder import check_recorded_config, prepare_output_dir, run_lock, write_atomically, write_metrics
from mass_ref.toy.base import base_state, build_toy_base, load_base_state
from mass_ref.toy.evaluate import base_errors, synthetic_errors
from mass_ref.toy.generator import SineGenerator
from mass_ref.toy.mass import ToyMassConfig, train_toy_mass
from mass_ref.toy.problems import sample_sine_problems
from mass_ref.toy.scorer import SineScorer

__all__ = ["CONFIG", "BaseSection", "ToyRunConfig", "base_models", "evaluate", "report", "train"]


@dataclass(frozen=True)
class BaseSection:
    """How long to pretrain the learner (MAML) and the generator's labeller."""

    learner_iterations: int = 12_000
    labeler_iterations: int = 3_000

    def __post_init__(self) -> None:
        check_positive_int(self.learner_iterations, "base.learner_iterations")
        check_positive_int(self.labeler_iterations, "base.labeler_iterations")


@dataclass(frozen=True)
class ToyRunConfig(ExperimentConfig):
    """One toy MASS run (``experiment: toy_mass``): ``python -m mass_ref train --config FILE``.

    The fields of :class:`~mass_ref.config.ExperimentConfig`, and:

    Attributes:
        base: the pretrained parts' budgets (:func:`~mass_ref.toy.base.build_toy_base`).
        mass: any field of :class:`~mass_ref.toy.mass.ToyMassConfig`.
        evaluate: held-out problems and the test-time budget.
    """

    EXPERIMENT: ClassVar[str] = "toy_mass"

    base: BaseSection = field(default_factory=BaseSection)
    mass: ToyMassConfig = field(default_factory=ToyMassConfig)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)


CONFIG = ToyRunConfig
"""The config class of ``experiment: toy_mass`` (see :data:`mass_ref.config.EXPERIMENTS`)."""


def base_models(config: ToyRunConfig, out: Path, *, progress: bool) -> tuple[nn.Module, SineGenerator]:
    """Load ``out/base.pt`` or build the pretrained learner and generator (and cache them there)."""
    state = load_checkpoint(out / "base.pt")
    if state is None:
        learner, generator_model = build_toy_base(
            config.seed, learner_iterations=config.base.learner_iterations,
            labeler_iterations=config.base.labeler_iterations, inner_lr=config.mass.inner_lr, progress=progress)
        save_checkpoint(out / "base.pt", base_state(learner, generator_model))
        return learner, generator_model
    return load_base_state(state)


def train(config: ToyRunConfig, *, progress: bool = True, stop_after: int | None = None) -> list[dict[str, float]]:
    """Meta-train as ``config`` says, resuming from ``output_dir`` if a checkpoint is there.

    ``stop_after`` stops after that many meta-steps in all (checkpointed), to interrupt on purpose.
    Returns one dict of diagnostics per meta-step (also in ``metrics.jsonl``).

    Raises:
        ~mass_ref.run_folder.RunFolderInUse: another ``train`` is writing ``output_dir``
            (:func:`~mass_ref.run_folder.run_lock`, held for the whole run).
        ConfigError: the inner loop diverged (names the meta-step, the inner step and ``mass.inner_lr``).
    """
    with run_lock(Path(config.output_dir)):
        out = prepare_output_dir(config)
        learner, generator_model = base_models(config, out, progress=progress)
        torch.manual_seed(config.seed)  # the scorer's initial weights
        generator_model, scorer = copy.deepcopy(generator_model), SineScorer()

        def on_checkpoint(history: list[dict[str, float]]) -> None:
            write_metrics(out, ({"step": i + 1, **metrics} for i, metrics in enumerate(history)))

        try:
            return train_toy_mass(learner, generator_model, scorer, config.mass, steps=config.steps,
                                  seed=config.seed, checkpoint_path=out / "checkpoint.pt",
                                  checkpoint_every=config.checkpoint_every, stop_after=stop_after, progress=progress,
                                  on_checkpoint=on_checkpoint)
        except NonFiniteError as error:  # a config problem: say which field, not a torch traceback
            raise ConfigError(f"training diverged: {error} Set a smaller mass.inner_lr (or fewer "
                              "mass.num_inner_steps) in the config; the checkpoints so far are kept.") from error


def evaluate(config: ToyRunConfig, *, progress: bool = False) -> dict[str, float]:
    """Held-out |f(x*) − y*| of Base, TT-SS and the trained run (same test-time budget); writes ``eval.json``.

    ``progress`` is accepted for the command line's sake (the toy's evaluation takes seconds).

    Raises:
        ConfigError: ``output_dir`` holds another config, or no finished training.
    """
    out = Path(config.output_dir)
    check_recorded_config(config, out, required=True)
    state = load_checkpoint(out / "checkpoint.pt")
    base = load_checkpoint(out / "base.pt")
    if state is None or base is None or len(state["history"]) < config.steps:
        done = 0 if state is None else len(state["history"])
        raise ConfigError(f"{out} holds no finished run ({done}/{config.steps} meta-steps); run `train` first "
                          "(it resumes where it stopped).")
    learner, generator_model = load_base_state(base)
    trained_generator, scorer = copy.deepcopy(generator_model), SineScorer()
    trained_generator.load_state_dict(state["generator"])
    scorer.load_state_dict(state["scorer"])
    held_out = torch.Generator().manual_seed(10_000 + config.seed)
    problems = sample_sine_problems(config.evaluate.n_problems, generator=held_out)
    budget = dict(num_examples=config.evaluate.num_examples, inner_lr=config.mass.inner_lr,
                  num_steps=config.evaluate.num_inner_steps)
    # the same sampling streams as notebook 03 uses for seed index config.seed
    errors = {
        "base": base_errors(learner, problems),
        "tt_ss": synthetic_errors(learner, problems, generator_model, None,
                                  generator=torch.Generator().manual_seed(config.seed), **budget),
        "trained": synthetic_errors(learner, problems, trained_generator, scorer if config.mass.train_scorer else None,
                                    generator=torch.Generator().manual_seed(config.seed), **budget),
    }
    result: dict[str, float] = {"n_problems": config.evaluate.n_problems}
    for name, values in errors.items():
        result[f"err_{name}"], result[f"err_{name}_ci95"] = mean_ci95(values)
    write_atomically(out / "eval.json", json.dumps(result, indent=2) + "\n")
    return result


def report(config: ToyRunConfig, command: str, result: Any) -> None:
    """Print what ``command`` ("train" or "evaluate") returned, for the command line."""
    if command == "train":
        print(f"{len(result)}/{config.steps} meta-steps in {config.output_dir}; "
              f"last outer loss {result[-1]['outer_loss']:.4f}")
    else:
        for key in ("base", "tt_ss", "trained"):
            print(f"{key:8s} |error| = {result[f'err_{key}']:.3f} ± {result[f'err_{key}_ci95']:.3f}")
