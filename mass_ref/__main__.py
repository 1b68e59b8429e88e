"""Command line: long runs outside notebooks, resumable, calling the same functions as the notebooks.

    python -m mass_ref train    --config configs/toy_mass_gold.yaml   # progress bar, checkpoints, metrics.jsonl
    python -m mass_ref evaluate --config configs/toy_mass_gold.yaml   # held-out errors -> eval.json
    python -m mass_ref train    --config configs/lm_mass_tiny.yaml    # every LM method x seed (chapter 5)
    python -m mass_ref evaluate --config configs/lm_mass_tiny.yaml    # every evaluation row's accuracy -> eval.json

Everything a run writes lives in the config's ``output_dir``: ``config.yaml`` (the resolved config),
checkpoints, ``metrics.jsonl`` (one line per meta-step, rewritten at each checkpoint so it always
matches the checkpoints) and ``eval.json``. Killed at any point, the same ``train`` command resumes
from the last checkpoint and reaches the same final state as a run that was never interrupted.

- ``experiment: toy_mass``: ``base.pt`` (the pretrained parts), ``checkpoint.pt`` (generator,
  scorer, optimisers, RNG, history).
- ``experiment: lm_mass``: ``<method>_seed<N>.pt`` per trained method and seed
  (:func:`mass_ref.lm.experiment.train_lm_methods`), metrics lines tagged with ``method`` and
  ``seed``; ``evaluate`` keeps each seed's answers in ``eval_seed<N>.json`` (so it resumes too)
  and pools them with :func:`~mass_ref.lm.summary.summarize_lm_methods`. The base model is
  cached in ``cache_dir``.

Introduced in notebooks/03_mass_toy.ipynb (toy_mass) and notebooks/05_mass_llm.ipynb (lm_mass).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml

from mass_ref.checkpoint import load_checkpoint, save_checkpoint
from mass_ref.config import ConfigError, LMRunConfig, RunConfig, load_config
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


def check_recorded_config(config: RunConfig | LMRunConfig, out: Path, *, required: bool) -> bool:
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


def prepare_output_dir(config: RunConfig | LMRunConfig) -> Path:
    """Create ``output_dir`` and record the config there; refuse a folder that holds another run."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not check_recorded_config(config, out, required=False):
        _write_atomically(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    return out


def write_metrics(out: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Rewrite ``out/metrics.jsonl`` with one JSON line per row (atomically: it always matches a checkpoint)."""
    _write_atomically(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))


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

    def on_checkpoint(history: list[dict[str, float]]) -> None:
        write_metrics(out, ({"step": i + 1, **metrics} for i, metrics in enumerate(history)))

    return train_toy_mass(learner, generator_model, scorer, config.mass, steps=config.steps, seed=config.seed,
                          checkpoint_path=out / "checkpoint.pt", checkpoint_every=config.checkpoint_every,
                          stop_after=stop_after, progress=progress, on_checkpoint=on_checkpoint)


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


Runs = dict[tuple[str, int], list[dict[str, float]]]
"""LM training histories: ``{(method, seed): one dict of diagnostics per meta-step}``."""


def _recorded_runs(out: Path) -> Runs:
    """The per-(method, seed) histories that ``metrics.jsonl`` records (empty when there is none)."""
    path, runs = out / "metrics.jsonl", {}
    for line in path.read_text().splitlines() if path.is_file() else ():
        row = json.loads(line)
        method, seed = row.pop("method"), row.pop("seed")
        row.pop("step")
        runs.setdefault((method, seed), []).append(row)
    return runs


def _write_lm_metrics(out: Path, config: LMRunConfig, runs: Runs) -> None:
    write_metrics(out, ({"method": method, "seed": seed, "step": i + 1, **metrics}
                        for method in config.methods for seed in config.seeds
                        for i, metrics in enumerate(runs.get((method, seed), []))))


def train_lm(config: LMRunConfig, *, progress: bool = True, stop_after: int | None = None) -> Runs:
    """Train every method of ``config.methods`` for every seed, resuming from ``output_dir``'s checkpoints.

    ``stop_after`` stops each (method, seed) run after that many meta-steps (to interrupt on purpose).
    Under ``torchrun``/``accelerate launch`` the ranks train data-parallel (:mod:`mass_ref.distributed`):
    rank 0 prepares the output folder and the model cache first, and alone writes files.
    """
    from mass_ref.distributed import data_parallel_from_env
    from mass_ref.lm import experiment as lm  # imports transformers: only LM runs pay for it
    from mass_ref.lm.problems import ProblemSource

    parallel = data_parallel_from_env()
    if not parallel.is_main:
        parallel.barrier()  # rank 0 first creates the folder and fills the model cache, then the others load
    out = prepare_output_dir(config) if parallel.is_main else Path(config.output_dir)
    runs = _recorded_runs(out)
    model, tokenizer, fmt = lm.load_lm_for_mass(config.model, config.cache_dir, progress=progress and parallel.is_main)
    if parallel.is_main:
        parallel.barrier()

    def on_checkpoint(method: str, seed: int, history: list[dict[str, float]]) -> None:
        runs[method, seed] = history
        _write_lm_metrics(out, config, runs)

    histories = lm.train_lm_methods(
        model, tokenizer, fmt, config.mass, ProblemSource(config.data, config.model.tiny), methods=config.methods,
        seeds=config.seeds, steps=config.steps, output_dir=out, checkpoint_every=config.checkpoint_every,
        stop_after=stop_after, progress=progress, on_checkpoint=on_checkpoint, parallel=parallel)
    runs = {(method, seed): history for method, per_seed in histories.items() for seed, history in per_seed.items()}
    if parallel.is_main:
        _write_lm_metrics(out, config, runs)  # also for runs that were already finished (no checkpoint this time)
    return runs


def evaluate_lm(config: LMRunConfig, *, progress: bool = False) -> dict[str, float]:
    """Accuracy of the base methods and of every trained one on held-out problems, pooled over seeds.

    Writes ``eval_seed<N>.json`` per seed (reused when present) and ``eval.json``
    (:func:`~mass_ref.lm.summary.summarize_lm_methods`); refuses unfinished training.
    """
    from mass_ref.lm import experiment as lm
    from mass_ref.lm.problems import ProblemSource
    from mass_ref.lm.summary import summarize_lm_methods

    out = Path(config.output_dir)
    check_recorded_config(config, out, required=True)
    runs = _recorded_runs(out)
    unfinished = [f"{method} seed {seed}: {len(runs.get((method, seed), []))}/{config.steps}"
                  for method in config.methods for seed in config.seeds
                  if len(runs.get((method, seed), [])) < config.steps]
    if unfinished:
        raise ConfigError(f"{out} holds unfinished training ({'; '.join(unfinished)} meta-steps); run `train` "
                          "first (it resumes where it stopped).")
    methods = lm.evaluation_rows(config.methods, config.data.test)
    model, tokenizer, fmt = lm.load_lm_for_mass(config.model, config.cache_dir, progress=progress)
    source = ProblemSource(config.data, config.model.tiny)  # one source: a benchmark is read once for all seeds
    per_seed: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in config.seeds:
        path = out / f"eval_seed{seed}.json"
        if not path.is_file():
            results = lm.evaluate_lm_methods(
                model, tokenizer, fmt, config.mass, source, methods=methods, seed=seed,
                steps=config.steps, output_dir=out, n_problems=config.evaluate.n_problems,
                num_examples=config.evaluate.num_examples, num_inner_steps=config.evaluate.num_inner_steps,
                progress=progress)
            kept = {m: {key: r[key] for key in ("correct", "gold_loss", "auc")} for m, r in results.items()}
            _write_atomically(path, json.dumps(kept) + "\n")
        per_seed[seed] = json.loads(path.read_text())
    report = summarize_lm_methods(per_seed)
    _write_atomically(out / "eval.json", json.dumps(report, indent=2) + "\n")
    return report


def _print_results(config: RunConfig | LMRunConfig, command: str, result: Any) -> None:
    if isinstance(config, RunConfig) and command == "train":
        print(f"{len(result)}/{config.steps} meta-steps in {config.output_dir}; "
              f"last outer loss {result[-1]['outer_loss']:.4f}")
    elif isinstance(config, RunConfig):
        for key in ("base", "tt_ss", "trained"):
            print(f"{key:8s} |error| = {result[f'err_{key}']:.3f} ± {result[f'err_{key}_ci95']:.3f}")
    elif command == "train":
        for (method, seed), history in result.items():
            last = ", ".join(f"{key} {history[-1][key]:.3f}" for key in ("outer_loss", "answer_pass_rate")
                             if history[-1].get(key, float("nan")) == history[-1].get(key))  # skip NaN
            print(f"{method:12s} seed {seed}: {len(history)}/{config.steps} meta-steps; last step: {last}")
        print(f"checkpoints and metrics.jsonl in {config.output_dir}")
    else:
        from mass_ref.lm.experiment import EVAL_METHODS

        print(f"{result['n_seeds']} seed(s), {result['n_problems']} problems in all; accuracy and gold-answer loss:")
        for method in (m for m in EVAL_METHODS if f"acc_{m}" in result):
            print(f"  {method:26s} {result[f'acc_{method}']:.3f} ± {result[f'acc_{method}_ci95']:.3f}   "
                  f"{result[f'gold_loss_{method}']:.3f} ± {result[f'gold_loss_{method}_ci95']:.3f}")


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
            config = dataclasses.replace(config, output_dir=args.output_dir)
        progress = not args.no_progress
        if isinstance(config, LMRunConfig):
            result: Any = (train_lm(config, progress=progress, stop_after=args.stop_after) if args.command == "train"
                           else evaluate_lm(config, progress=progress))
        else:
            result = (train(config, progress=progress, stop_after=args.stop_after) if args.command == "train"
                      else evaluate(config))
        if int(os.environ.get("RANK", "0")) == 0:  # one report under a data-parallel launcher
            _print_results(config, args.command, result)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
