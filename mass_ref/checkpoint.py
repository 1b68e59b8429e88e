"""Checkpoints that make long runs resumable with no lost steps, and the loop both trainers share.

A checkpoint is one ``torch.save`` file holding whatever state dict the training loop gives it:
module and optimiser state dicts, the step counter, the history so far and the state of the
``torch.Generator`` that drives sampling, so that a resumed run draws the same numbers the
uninterrupted run would have drawn. Files are written to a temporary name and renamed, so a run
killed while saving leaves the previous checkpoint intact.

:func:`resumable_loop` is the loop of :func:`~mass_ref.toy.mass.train_toy_mass` and
:func:`~mass_ref.lm.trainer.train_lm_mass`: load the checkpoint if there is one, check that it was
written by this very run (same config, seed and :func:`fingerprint` of the starting models),
run steps ``len(history), ..., steps − 1`` and save every ``checkpoint_every`` steps and at the end.
A checkpoint holds

    {"config": ..., "seed": ..., "start": fingerprint, "step": len(history), "history": [...], **training state}

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from mass_ref.distributed import DataParallel

__all__ = ["fingerprint", "load_checkpoint", "resumable_loop", "save_checkpoint"]

History = list[dict[str, float]]
"""One dict of diagnostics per step."""


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


def fingerprint(*modules: nn.Module) -> str:
    """SHA-256 of the modules' state dicts (names, shapes and raw values, any dtype): a run's starting point.

    Two calls agree exactly when every tensor has the same name, shape, dtype width and bytes, on
    any device.
    """
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # bf16 has no numpy dtype
            digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def _positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")


def _mismatches(state: dict[str, Any], config: dict[str, Any], seed: int, start: str) -> list[str]:
    """What differs between a checkpoint and this run, one phrase per difference."""
    found = []
    if state["config"] != config:
        names = sorted(k for k in set(state["config"]) | set(config) if state["config"].get(k) != config.get(k))
        found.append("config " + ", ".join(f"{k} ({state['config'].get(k)!r} in the checkpoint, {config.get(k)!r} "
                                           "here)" for k in names))
    if state["seed"] != seed:
        found.append(f"seed ({state['seed']!r} in the checkpoint, {seed!r} here)")
    if "start" in state and state["start"] != start:  # checkpoints written before fingerprints were kept: unchecked
        found.append(f"starting models (fingerprint {state['start'][:12]}… in the checkpoint, {start[:12]}… here)")
    return found


def resumable_loop(
    step: Callable[[int], dict[str, float]],
    *,
    steps: int,
    config: dict[str, Any],
    seed: int,
    starting_models: Sequence[nn.Module],
    training_state: Callable[[], dict[str, Any]],
    restore: Callable[[dict[str, Any]], None],
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 100,
    stop_after: int | None = None,
    progress: bool = True,
    desc: str = "training",
    on_checkpoint: Callable[[History], None] | None = None,
    parallel: DataParallel | None = None,
) -> History:
    """Run ``step(t)`` for t = len(history), ..., steps − 1, resuming from and saving to ``checkpoint_path``.

    Args:
        step: one training step t, in place; returns its diagnostics (appended to the history).
        steps: the run's length.
        config: the run's config as plain data (e.g. ``dataclasses.asdict``).
        seed: the run's seed.
        starting_models: the models as the run starts from them, before any step or restore; their
            :func:`fingerprint` is kept. A checkpoint resumes only when config, seed and fingerprint
            all match; one that records no fingerprint (written before fingerprints were kept, e.g.
            the LM checkpoints shipped in ``mass_ref/lm/metatrained``) is checked on config and seed alone.
        training_state: everything the steps change, as a dict of picklable values (state dicts, RNG
            states); saved beside config, seed, start, step and history in every checkpoint.
        restore: loads a checkpoint (the whole dict) back into the models, optimisers and RNGs.
        checkpoint_path: None: no checkpoints (the loop runs from step 0).
        checkpoint_every: save after every that many steps, and always after the last one run.
        stop_after: stop after that many steps in all (checkpointed), to interrupt on purpose.
        progress: show a progress bar (rank 0 only).
        desc: the progress bar's label.
        on_checkpoint: called with the history after every checkpoint (e.g. to rewrite a metrics log
            that always matches the checkpoint).
        parallel: this process's rank when data-parallel: rank 0 alone writes, and every rank waits
            at each checkpoint, so none runs ahead of a state it might have to resume from.

    Returns:
        The history: the checkpoint's steps, then the new ones.

    Raises:
        ValueError: ``steps``/``checkpoint_every`` not positive integers; the checkpoint was written
            by another run (naming each difference: config fields, seed, starting models); or it
            already holds more than ``steps`` steps.
    """
    _positive_int(steps, "steps")
    _positive_int(checkpoint_every, "checkpoint_every")
    parallel = parallel or DataParallel()
    history: History = []
    start = "" if checkpoint_path is None else fingerprint(*starting_models)  # hashing a large model takes a while
    state = load_checkpoint(checkpoint_path)
    if state is not None:
        mismatches = _mismatches(state, config, seed, start)
        if mismatches:
            raise ValueError(f"checkpoint {checkpoint_path} was written by another run: {'; '.join(mismatches)}. "
                             "Delete it (or use another path) to start over, or pass the same config, seed and "
                             "starting models to resume.")
        if len(state["history"]) > steps:
            raise ValueError(f"checkpoint {checkpoint_path} already holds {len(state['history'])} steps, more than "
                             f"steps={steps}; pass steps >= {len(state['history'])}.")
        restore(state)
        history = state["history"]

    def checkpoint() -> None:
        if parallel.is_main:
            if checkpoint_path is not None:
                save_checkpoint(checkpoint_path, {"config": config, "seed": seed, "start": start, "step": len(history),
                                                  "history": history, **training_state()})
            if on_checkpoint is not None:
                on_checkpoint(history)
        parallel.barrier()

    end = steps if stop_after is None else max(len(history), min(steps, stop_after))
    for t in tqdm(range(len(history), end), desc=desc, disable=not (progress and parallel.is_main), mininterval=5.0,
                  initial=len(history), total=steps):
        history.append(step(t))
        if (t + 1) % checkpoint_every == 0 or t + 1 == end:
            checkpoint()
    return history
