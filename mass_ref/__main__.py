"""Command line: long runs outside notebooks, resumable, calling the same functions as the notebooks.

    python -m mass_ref train    --config configs/toy_mass_gold.yaml   # progress bar, checkpoints, metrics.jsonl
    python -m mass_ref evaluate --config configs/toy_mass_gold.yaml   # held-out errors -> eval.json

Everything a run writes lives in the config's ``output_dir``: ``config.yaml`` (the resolved config),
``base.pt`` (the pretrained parts), ``checkpoint.pt`` (generator, scorer, optimisers, RNG, history),
``metrics.jsonl`` (one line per meta-step, rewritten at each checkpoint so it always matches it) and
``eval.json``. Killed at any point, the same ``train`` command resumes from the last checkpoint and
reaches the same final state as a run that was never interrupted.

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from mass_ref.checkpoint import load_checkpoint, save_checkpoint
from mass_ref.config import ConfigError, RunConfig, load_config
from mass_ref.results import mean_ci95
from mass_ref.toy import (
    SineScorer,
    base_errors,
    base_state,
    build_toy_base,
    load_base_state,
    sample_sine_problems,
    synthetic_errors,
    train_toy_mass,
)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_recorded_config(config: RunConfig, out: Path, *, required: bool) -> bool:
    """Refuse ``out`` if its ``config.yaml`` records another config; return whether one is recorded."""
    recorded = out / "config.yaml"
    if not recorded.is_file():
        if required:
            raise ConfigError(f"{out} holds no run (no {recorded.name}); run `train` with this config first.")
        return False
    if yaml.safe_load(recorded.read_text()) != config.to_dict():
        raise ConfigError(f"{out} holds a run with a different config ({recorded}); use another output_dir, or "
                          "delete the folder to start over.")
    return True


def prepare_output_dir(config: RunConfig) -> Path:
    """Create ``output_dir`` and record the config there; refuse a folder that holds another run."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not check_recorded_config(config, out, required=False):
        _write_atomically(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    return out


def base_models(config: RunConfig, out: Path, *, progress: bool) -> tuple[torch.nn.Module, Any]:
    """Load ``base.pt`` or build the pretrained learner and generator (and cache them)."""
    state = load_checkpoint(out / "base.pt")
    if state is None:
        learner, generator_model = build_toy_base(
            config.seed, learner_iterations=config.base.learner_iterations,
            labeler_iterations=config.base.labeler_iterations, inner_lr=config.mass.inner_lr, progress=progress)
        save_checkpoint(out / "base.pt", base_state(learner, generator_model))
        return learner, generator_model
    return load_base_state(state)


def train(config: RunConfig, *, progress: bool = True, stop_after: int | None = None) -> list[dict[str, float]]:
    """Meta-train as ``config`` says, resuming from ``output_dir`` if a checkpoint is there."""
    out = prepare_output_dir(config)
    learner, generator_model = base_models(config, out, progress=progress)
    torch.manual_seed(config.seed)  # the scorer's initial weights
    generator_model, scorer = copy.deepcopy(generator_model), SineScorer()

    def write_metrics(history: list[dict[str, float]]) -> None:
        lines = (json.dumps({"step": i + 1, **metrics}) for i, metrics in enumerate(history))
        _write_atomically(out / "metrics.jsonl", "\n".join(lines) + "\n")

    return train_toy_mass(learner, generator_model, scorer, config.mass, steps=config.steps, seed=config.seed,
                          checkpoint_path=out / "checkpoint.pt", checkpoint_every=config.checkpoint_every,
                          stop_after=stop_after, progress=progress, on_checkpoint=write_metrics)


def evaluate(config: RunConfig) -> dict[str, float]:
    """Held-out |f(x*) − y*| of Base, TT-SS and the trained run (same test-time budget); writes ``eval.json``."""
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
    problems = sample_sine_problems(config.evaluate.n_problems, generator=torch.Generator().manual_seed(10_000 + config.seed))
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
    report: dict[str, float] = {"n_problems": config.evaluate.n_problems}
    for name, values in errors.items():
        report[f"err_{name}"], report[f"err_{name}_ci95"] = mean_ci95(values)
    _write_atomically(out / "eval.json", json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mass_ref", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("train", "evaluate"))
    parser.add_argument("--config", required=True, help="YAML run config (see configs/)")
    parser.add_argument("--output-dir", help="override the config's output_dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # interrupt on purpose (tests)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.output_dir:
            config = RunConfig(**{**config.__dict__, "output_dir": args.output_dir})
        if args.command == "train":
            history = train(config, progress=not args.no_progress, stop_after=args.stop_after)
            print(f"{len(history)}/{config.steps} meta-steps in {config.output_dir}; "
                  f"last outer loss {history[-1]['outer_loss']:.4f}")
        else:
            report = evaluate(config)
            for key in ("base", "tt_ss", "trained"):
                print(f"{key:8s} |error| = {report[f'err_{key}']:.3f} ± {report[f'err_{key}_ci95']:.3f}")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
