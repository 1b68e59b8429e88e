"""The output folder of a command-line run: its recorded config, its metrics log, atomic writes, its lock.

Everything a run writes lives in its config's ``output_dir``: ``config.yaml`` (the resolved config,
written once, so that a folder never mixes two runs), checkpoints, ``metrics.jsonl`` (one JSON line
per step, rewritten at each checkpoint so it always matches the checkpoints) and ``eval.json``.
Every experiment's commands (:data:`mass_ref.config.EXPERIMENTS`) keep their folder with these.

Every file is written with :func:`atomic_write` (a per-process temporary file, fsync, rename): a
reader, a crash or a second process never sees half a file, and a failed write (disk full) raises
:class:`AtomicWriteError` and leaves the old file and no temporary behind. While ``train`` runs it
holds :func:`run_lock` (``train.lock`` in the folder): a second ``train`` on the same folder is
refused with :class:`RunFolderInUse` instead of racing the first one.

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from mass_ref.config import ConfigError, ExperimentConfig

try:  # POSIX: the kernel drops a flock when its process dies, even on kill -9
    import fcntl
except ImportError:  # pragma: no cover - Windows: a pid file, checked for a live process
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "AtomicWriteError", "RunFolderInUse", "StaleLockWarning", "atomic_write",
           "check_recorded_config", "pid_alive", "prepare_output_dir", "run_lock", "write_atomically",
           "write_metrics"]

LOCK_FILE = "train.lock"
"""The lock file :func:`run_lock` keeps in a run folder while ``train`` writes it."""


class AtomicWriteError(OSError):
    """A file could not be written (disk full, permissions, ...); the previous file is intact, no temporary remains.

    ``errno``, ``strerror`` and ``filename`` are those of the failure; ``str()`` says what happened and what to do.
    """

    def __init__(self, path: Path, cause: BaseException, hint: str = "") -> None:
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        super().__init__(getattr(cause, "errno", None), reason, str(path))
        self.message = (f"could not write {path}: {reason}"
                        f"{f' (errno {self.errno})' if self.errno is not None else ''}. {path} was left as it was "
                        f"(the partial temporary file was removed).{f' {hint}' if hint else ''}")

    def __str__(self) -> str:
        return self.message


class _RecordingWriter:
    """A binary file that remembers the ``OSError`` of a failed write.

    ``torch.save`` turns a failed ``write`` into an opaque ``RuntimeError`` ("unexpected pos ...");
    keeping the original error lets :func:`atomic_write` report e.g. "No space left on device".
    """

    def __init__(self, file: IO[Any]) -> None:
        self.file, self.error = file, None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:  # flush, tell, ...: the file's own
        return getattr(self.file, name)


_temporaries = itertools.count()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, text: bool = False,
                 keep_previous: Path | None = None, hint: str = "") -> Iterator[Any]:
    """Yield a file to write ``path`` with; on success it replaces ``path`` in one rename (readers see old or new).

    The temporary file is ``<name>.<pid>.<n>.tmp`` in the same folder (a rename within one file
    system is atomic; the pid keeps concurrent writers apart), flushed and fsync'ed before the
    rename, so a crash or power loss cannot leave a renamed but empty file. ``keep_previous``: move
    the existing ``path`` there first (the checkpoints' ``.prev``). On any failure (also Ctrl-C)
    the temporary file is removed; an ``OSError`` (also one hidden behind a writer's
    ``RuntimeError``) becomes :class:`AtomicWriteError`, whose message ends with ``hint``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{next(_temporaries)}.tmp")
    writer: _RecordingWriter | None = None
    try:
        with open(tmp, "w" if text else "wb") as file:
            writer = _RecordingWriter(file)
            yield writer
            file.flush()
            os.fsync(file.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        cause = writer.error if writer is not None and writer.error is not None else error
        if isinstance(cause, OSError) and not isinstance(cause, AtomicWriteError):
            raise AtomicWriteError(path, cause, hint) from error
        raise


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_write`: readers see the old or the new file."""
    with atomic_write(path, text=True) as file:
        file.write(text)


class RunFolderInUse(ConfigError):
    """Another process holds the run folder's lock; the message names it and how to clear the lock."""


class StaleLockWarning(UserWarning):
    """A lock left by a run that no longer runs (e.g. killed) was taken over."""


def _holder(text: str) -> dict[str, Any]:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
            if holder else "holder unknown")


def _open_exclusively(path: Path) -> tuple[int, dict[str, Any]] | None:
    """Open and lock ``path``; return ``(fd, what the file said)``, or None to try again (the file changed)."""
    if fcntl is None:  # pragma: no cover - no flock: create the file exclusively, clear it when its pid is gone
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), {}
        except FileExistsError:
            holder = _holder(path.read_text())
            if holder.get("host") != socket.gethostname() or pid_alive(int(holder.get("pid", -1))):
                raise RunFolderInUse(_in_use(path, holder)) from None
            path.unlink(missing_ok=True)
            return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(os.read(fd, 4096).decode(errors="replace"))
        os.close(fd)
        raise RunFolderInUse(_in_use(path, holder)) from None
    try:  # its last holder may have deleted the file between our open and flock: lock the new one
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd, _holder(os.read(fd, 4096).decode(errors="replace"))


def _in_use(path: Path, holder: dict[str, Any]) -> str:
    return (f"{path.parent} is in use by another `train` ({_describe(holder)}; lock file {path}). Wait for it to "
            "finish, or give this run another output_dir (--output-dir). If that process is not running any more "
            f"(e.g. its machine crashed), delete {path} and run again.")


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[Path]:
    """Hold ``out/train.lock`` for the ``with`` block: one writing process per run folder.

    The file records pid, host, start time and command. Another process entering meanwhile gets
    :class:`RunFolderInUse` (naming the holder and how to clear the lock). A lock left by a killed
    run is taken over with a :class:`StaleLockWarning`: with ``flock`` (POSIX) the kernel releases
    it when its process dies, even on kill -9; without it, a lock whose pid no longer runs on this
    host counts as stale. Under a data-parallel launcher only rank 0 should hold it.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    opened = None
    while opened is None:
        opened = _open_exclusively(path)
    fd, previous = opened
    if previous:
        warnings.warn(f"took over {path}, left by a run that is no longer running ({_describe(previous)}); "
                      "it was probably killed, and this run resumes from its last checkpoint.", StaleLockWarning,
                      stacklevel=3)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(me) + "\n").encode())
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # before the unlock: a process waiting on this file notices and retries
        os.close(fd)


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
