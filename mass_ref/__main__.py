"""Command line: long runs outside notebooks, resumable, calling the same functions as the notebooks.

    python -m mass_ref train    --config configs/toy_mass_gold.yaml   # progress bar, checkpoints, metrics.jsonl
    python -m mass_ref evaluate --config configs/toy_mass_gold.yaml   # held-out errors -> eval.json
    python -m mass_ref train    --config configs/lm_mass_tiny.yaml    # every LM method x seed (chapter 5)
    python -m mass_ref evaluate --config configs/lm_mass_tiny.yaml    # every evaluation row's accuracy -> eval.json

Everything a run writes lives in the config's ``output_dir`` (:mod:`mass_ref.run_folder`):
``config.yaml`` (the resolved config), checkpoints, ``metrics.jsonl`` (one line per meta-step,
rewritten at each checkpoint so it always matches the checkpoints) and ``eval.json``. Killed at any
point, the same ``train`` command resumes from the last checkpoint and reaches the same final state
as a run that was never interrupted.

The file's ``experiment`` picks who runs it (:data:`mass_ref.config.EXPERIMENTS`):

- ``experiment: toy_mass``: :mod:`mass_ref.toy.experiment`; ``base.pt`` (the pretrained parts),
  ``checkpoint.pt`` (generator, scorer, optimisers, RNG, history).
- ``experiment: lm_mass``: :mod:`mass_ref.lm.run_config`; ``<method>_seed<N>.pt`` per trained
  method and seed, metrics lines tagged with ``method`` and ``seed``; ``evaluate`` keeps each
  seed's answers in ``eval_seed<N>.json``, row by row while it runs (so a killed evaluation resumes
  at the row it stopped in). The base model is cached in ``cache_dir``.

Introduced in notebooks/03_mass_toy.ipynb (toy_mass) and notebooks/05_mass_llm.ipynb (lm_mass).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from mass_ref.config import ConfigError, experiment_module, load_config
from mass_ref.inner import NonFiniteError
from mass_ref.run_folder import AtomicWriteError


def main(argv: list[str] | None = None) -> int:
    """Run ``train`` or ``evaluate`` for a config file; returns the exit status (2: a bad config or folder)."""
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
        experiment = experiment_module(config.experiment)
        progress = not args.no_progress
        result: Any = (experiment.train(config, progress=progress, stop_after=args.stop_after)
                       if args.command == "train" else experiment.evaluate(config, progress=progress))
        if int(os.environ.get("RANK", "0")) == 0:  # one report under a data-parallel launcher
            experiment.report(config, args.command, result)
    except ConfigError as error:  # a bad config, data file or folder: nothing was done
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (AtomicWriteError, NonFiniteError) as error:  # a fault during the run: the last checkpoint is intact
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
