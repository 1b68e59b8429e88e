"""Seeds, headline-number files, figure paths and confidence intervals.

Every notebook ends with ``save_results(stem, {...}, profile=PROFILE)``, which writes a flat JSON
dict to ``results/<profile>/<stem>.json`` under the project root (README and docs quote the cpu
files). Figures go to ``figures/<profile>/<stem>_<name>.png`` (:func:`save_figure`). Both are
written atomically (a temporary file in the same folder, then a rename): a notebook interrupted
while saving leaves the previous file whole and no temporary file behind.

Introduced in notebooks/01_maml_sine.ipynb.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from mass_ref.run_folder import atomic_write

ROOT_ENV_VAR = "MASS_REF_ROOT"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a ``torch.Generator`` seeded with ``seed``.

    Same seed, same thread count, same CPU: same numbers. Pass the returned generator to every
    sampler so that the data stream does not depend on how many other random draws happened.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def project_root() -> Path:
    """``$MASS_REF_ROOT`` if set, else the nearest parent of the cwd holding ``pyproject.toml`` and
    ``mass_ref/``, else the cwd (e.g. on Colab)."""
    if os.environ.get(ROOT_ENV_VAR):
        return Path(os.environ[ROOT_ENV_VAR]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "mass_ref").is_dir():
            return folder
    return here


def results_path(stem: str, profile: str) -> Path:
    """``<root>/results/<profile>/<stem>.json``."""
    return project_root() / "results" / profile / f"{stem}.json"


def save_results(stem: str, metrics: Mapping[str, float | int | str | bool], *, profile: str) -> Path:
    """Write ``metrics`` (a flat dict of finite numbers, strings, bools) as sorted JSON; return the path."""
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise ValueError(f"results keys must be strings; got {key!r}.")
        if not isinstance(value, (int, float, str, bool)):
            raise ValueError(
                f"results must be a flat dict of numbers/strings; {key!r} has type {type(value).__name__}. "
                "Convert tensors with float(...) and flatten nested values into separate keys."
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"results[{key!r}] is {value}; only finite numbers can be saved.")
    path = results_path(stem, profile)
    text = json.dumps(dict(metrics), indent=2, sort_keys=True) + "\n"
    with atomic_write(path, text=True) as file:  # an interrupted save leaves the old file, not half a new one
        file.write(text)
    return path


def load_results(stem: str, profile: str) -> dict[str, float | int | str | bool]:
    """Read back what :func:`save_results` wrote."""
    return json.loads(results_path(stem, profile).read_text())


def figure_path(stem: str, name: str, *, profile: str) -> Path:
    """``<root>/figures/<profile>/<stem>_<name>.png`` (the folder is created)."""
    path = project_root() / "figures" / profile / f"{stem}_{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(figure: Any, stem: str, name: str, *, profile: str, **savefig: Any) -> Path:
    """Save a matplotlib ``figure`` as PNG to :func:`figure_path` atomically; return the path.

    ``savefig`` goes to ``figure.savefig`` (e.g. ``dpi=120``). Unlike ``figure.savefig(figure_path(...))``,
    an interrupted or failed save leaves the previous PNG whole and no temporary file.
    """
    path = figure_path(stem, name, profile=profile)
    with atomic_write(path) as file:
        figure.savefig(file, format="png", **savefig)
    return path


def run_directory(stem: str, profile: str, name: str, *settings: object) -> Path:
    """``<root>/build/runs/<stem>/<profile>/<name>-<hash of settings>``: where a notebook keeps resumable runs.

    The hash of ``repr(settings)`` (configs, sizes) makes a changed setting start a new run instead of
    resuming, or being refused by, a checkpoint written under other settings.
    """
    key = hashlib.sha256(repr(settings).encode()).hexdigest()[:10]
    return project_root() / "build" / "runs" / stem / profile / f"{name}-{key}"


def mean_ci95(values: Sequence[float] | np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t confidence interval of the mean.

    half-width = t_{0.975, n−1} · s / √n, with s the sample standard deviation.
    """
    x = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=float)
    x = x.reshape(-1)
    if x.size < 2:
        raise ValueError(f"mean_ci95 needs at least 2 values; got {x.size}.")
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return float(x.mean()), half
