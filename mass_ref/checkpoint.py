"""Checkpoints that make long runs resumable with no lost steps.

A checkpoint is one ``torch.save`` file holding whatever state dict the training loop gives it:
module and optimiser state dicts, the step counter, the history so far and the state of the
``torch.Generator`` that drives sampling, so that a resumed run draws the same numbers the
uninterrupted run would have drawn. Files are written to a temporary name and renamed, so a run
killed while saving leaves the previous checkpoint intact.

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The state saved at ``path``, or None when there is no checkpoint yet (or ``path`` is None)."""
    if path is None or not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
