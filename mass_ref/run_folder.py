"""The output folder of a command-line run: its recorded config, its metrics log, atomic writes.

Everything a run writes lives in its config's ``output_dir``: ``config.yaml`` (the resolved config,
written once, so that a folder never mixes two runs), checkpoints, ``metrics.jsonl`` (one JSON line
per step, rewritten at each checkpoint so it always matches the checkpoints) and ``eval.json``.
Every experiment's commands (:data:`mass_ref.config.EXPERIMENTS`) keep their folder with these.

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from mass_ref.config import ConfigError, ExperimentConfig

__all__ = ["check_recorded_config", "prepare_output_dir", "write_atomically", "write_metrics"]


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_recorded_config(config: ExperimentConfig, out: Path, *, required: bool) -> bool:
    """Refuse ``out`` if its ``config.yaml`` records another config; return whether one is recorded.

    Raises:
        ConfigError: ``out`` records another config, or (``required``) records none.
    """
    recorded = out / "config.yaml"
    if not recorded.is_file():
        if required:
            raise ConfigError(f"{out} holds no run (no {recorded.name}); run `train` with this config first.")
        return False
    if yaml.safe_load(recorded.read_text()) != config.to_dict():
        raise ConfigError(f"{out} holds a run with a different config ({recorded}); use another output_dir, or "
                          "delete the folder to start over.")
    return True


def prepare_output_dir(config: ExperimentConfig) -> Path:
    """Create ``output_dir`` and record the config there; refuse a folder that holds another run."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not check_recorded_config(config, out, required=False):
        write_atomically(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    return out


def write_metrics(out: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Rewrite ``out/metrics.jsonl`` with one JSON line per row (atomically: it always matches a checkpoint)."""
    write_atomically(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
