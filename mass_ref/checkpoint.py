"""Checkpoints that make long runs resumable with no lost steps, and the loop both trainers share.

A checkpoint is one ``torch.save`` file holding whatever state dict the training loop gives it:
module and optimiser state dicts, the step counter, the history so far and the state of the
``torch.Generator`` that drives sampling, so that a resumed run draws the same numbers the
uninterrupted run would have drawn.

Nothing is lost to a fault while saving or to a damaged file:

* every file is written through :func:`~mass_ref.run_folder.atomic_write`: a temporary file beside
  it, unique to the process (``<name>.<pid>.<n>.tmp``), flushed to disk, then renamed over the
  target. A run killed while saving leaves the previous file intact; a failed write (disk full, ...)
  raises :class:`~mass_ref.run_folder.AtomicWriteError` naming the file and the OS's reason, and
  removes its temporary file;
* :func:`save_checkpoint` keeps the previous checkpoint as ``<name>.prev`` (rotated on each save);
* :func:`load_checkpoint` skips a truncated or corrupt newest file with a
  :class:`CheckpointSkippedWarning` naming it and the error, and falls back to ``<name>.prev``;
  with no readable one it raises :class:`UnreadableCheckpointError`, naming the files and the fix.

:func:`resumable_loop` is the loop of :func:`~mass_ref.toy.mass.train_toy_mass` and
:func:`~mass_ref.lm.trainer.train_lm_mass`: load the checkpoint if there is one, check that it was
written by this very run (same config, seed and :func:`fingerprint` of the starting models),
run steps ``len(history), ..., steps − 1`` and save every ``checkpoint_every`` steps and at the end.
A checkpoint holds

    {"config": ..., "seed": ..., "start": fingerprint, "step": len(history), "history": [...], **training state}

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from mass_ref.progress import progress_bar

from mass_ref.config import ConfigError
from mass_ref.distributed import DataParallel
from mass_ref.run_folder import atomic_write, pid_alive

__all__ = ["CheckpointSkippedWarning", "LoadedCheckpoint", "UnreadableCheckpointError", "fingerprint",
           "load_checkpoint", "load_latest_checkpoint", "previous_path", "resumable_loop", "save_checkpoint"]

History = list[dict[str, float]]
"""One dict of diagnostics per step."""


class UnreadableCheckpointError(ConfigError):
    """No readable checkpoint: every file there is truncated or corrupt. The message names them and the fix."""


class CheckpointSkippedWarning(UserWarning):
    """A checkpoint file was unreadable (or missing) and an older one was used instead."""


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``<name>.<pid>.*.tmp`` files of processes that no longer run (a kill -9 while saving).

    Assumes one machine writes a folder (the run folder's lock, :func:`mass_ref.run_folder.run_lock`).
    """
    for tmp in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 1:].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def previous_path(path: str | os.PathLike[str]) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint before the newest: ``<path>.prev``."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (parent folders are created), keeping the old one as ``<path>.prev``.

    Raises:
        ~mass_ref.run_folder.AtomicWriteError: the write failed (e.g. errno ENOSPC, disk full); ``path`` and
            ``<path>.prev`` are as they were and no temporary file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    hint = ("Free some space (or fix the folder's permissions) and run the same command again: it resumes from the "
            "last checkpoint.")
    with atomic_write(path, keep_previous=previous_path(path), hint=hint) as file:
        torch.save(state, file)
    return path


@dataclass
class LoadedCheckpoint:
    """What :func:`load_latest_checkpoint` found.

    Attributes:
        state: the checkpoint's dict.
        source: the file it came from (``path`` or ``<path>.prev``).
        skipped: ``(file, reason)`` for each newer file that could not be used.
    """

    state: dict[str, Any]
    source: Path
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _read(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a checkpoint dict")
    return state


def load_latest_checkpoint(path: str | os.PathLike[str]) -> LoadedCheckpoint | None:
    """The newest readable checkpoint of ``path`` (``path``, else ``<path>.prev``); None if neither exists.

    Each file skipped (unreadable, or ``path`` missing beside a ``.prev``: a run killed between the
    two renames of a save) is reported with a :class:`CheckpointSkippedWarning`.

    Raises:
        UnreadableCheckpointError: files exist but none is readable (names them and the fix).
    """
    path = Path(path)
    candidates = [p for p in (path, previous_path(path)) if p.is_file()]
    if not candidates:
        return None
    skipped: list[tuple[Path, str]] = [] if candidates[0] == path else [(path, "missing")]
    for candidate in candidates:
        try:
            state = _read(candidate)
        except Exception as error:  # truncated zip, bad pickle, I/O error: anything that is not a checkpoint
            reason = f"{type(error).__name__}: {error}"
            skipped.append((candidate, reason if len(reason) <= 300 else reason[:300] + "…"))
            continue
        for bad, reason in skipped:
            warnings.warn(f"checkpoint {bad} skipped ({reason}); using the previous one, {candidate}.",
                          CheckpointSkippedWarning, stacklevel=3)
        return LoadedCheckpoint(state, candidate, skipped)
    files = " and ".join(str(p) for p in candidates)
    raise UnreadableCheckpointError(
        f"no readable checkpoint at {path}: "
        + "; ".join(f"{p} ({reason})" for p, reason in skipped if reason != "missing")
        + f". Delete {files} to start the run over (or restore a good copy).")


def load_checkpoint(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The state saved at ``path`` (or, if that file is unreadable, at ``<path>.prev``: a warning says so).

    None when there is no checkpoint yet (or ``path`` is None).

    Raises:
        UnreadableCheckpointError: checkpoint files exist but none can be read.
    """
    if path is None:
        return None
    loaded = load_latest_checkpoint(path)
    return None if loaded is None else loaded.state


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


def _set_aside_unreadable(path: Path, loaded: LoadedCheckpoint) -> None:
    """Rename an unreadable newest checkpoint to ``<path>.corrupt``.

    Else the next save would rotate it into ``<path>.prev`` over the good checkpoint just loaded,
    and a failure of that save would leave no readable checkpoint at all.
    """
    if loaded.source != path and path.is_file():
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        warnings.warn(f"moved the unreadable checkpoint {path} to {aside} (kept for inspection; delete it at will).",
                      CheckpointSkippedWarning, stacklevel=3)


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

    A truncated or corrupt newest checkpoint is skipped for ``<checkpoint_path>.prev`` (with a
    :class:`CheckpointSkippedWarning`) and renamed ``<checkpoint_path>.corrupt``
    (:func:`load_latest_checkpoint`).

    Returns:
        The history: the checkpoint's steps, then the new ones.

    Raises:
        UnreadableCheckpointError: checkpoint files exist but none can be read.
        ~mass_ref.run_folder.AtomicWriteError: a checkpoint could not be written (e.g. disk full); the
            previous one is intact.
        ValueError: ``steps``/``checkpoint_every`` not positive integers; the checkpoint was written
            by another run (naming each difference: config fields, seed, starting models); or it
            already holds more than ``steps`` steps.
    """
    _positive_int(steps, "steps")
    _positive_int(checkpoint_every, "checkpoint_every")
    parallel = parallel or DataParallel()
    history: History = []
    start = "" if checkpoint_path is None else fingerprint(*starting_models)  # hashing a large model takes a while
    loaded = None if checkpoint_path is None else load_latest_checkpoint(checkpoint_path)
    if loaded is not None:
        state, source = loaded.state, loaded.source
        mismatches = _mismatches(state, config, seed, start)
        if mismatches:
            also = "".join(f" and {p}" for p in (Path(checkpoint_path), previous_path(checkpoint_path))
                           if p != source and p.exists())
            raise ValueError(f"checkpoint {source} was written by another run: {'; '.join(mismatches)}. "
                             f"Delete it{also} (or use another path) to start over, or pass the same config, seed "
                             "and starting models to resume.")
        if len(state["history"]) > steps:
            raise ValueError(f"checkpoint {source} already holds {len(state['history'])} steps, more than "
                             f"steps={steps}; pass steps >= {len(state['history'])}.")
        if parallel.is_main:
            _set_aside_unreadable(Path(checkpoint_path), loaded)
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
    for t in progress_bar(range(len(history), end), enabled=progress and parallel.is_main, desc=desc, mininterval=5.0,
                  initial=len(history), total=steps):
        history.append(step(t))
        if (t + 1) % checkpoint_every == 0 or t + 1 == end:
            checkpoint()
    return history
