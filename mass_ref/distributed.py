"""Data-parallel meta-training: ranks take different problems and average their gradients.

Launch any training script or ``python -m mass_ref train`` under an existing launcher::

    torchrun --nproc_per_node 4 -m mass_ref train --config configs/lm_mass_gpu.yaml
    accelerate launch --multi_gpu --num_processes 4 -m mass_ref train --config configs/lm_mass_gpu.yaml

Both set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (``accelerate launch --cpu`` does not: on a CPU it
starts one process unless configured for MPI); :func:`data_parallel_from_env` joins the process
group (NCCL on GPUs, gloo on CPUs) and returns a :class:`DataParallel`. With R ranks and a batch
of B problems (R divides B) rank r takes problems ``r·B/R .. (r+1)·B/R − 1``; its losses are
means over its B/R problems, so the mean of the ranks' gradients is the full batch's gradient:

    ∇ (1/B) Σ_b L_b = (1/R) Σ_r ∇ (R/B) Σ_{b ∈ shard r} L_b.

Tested with gloo on CPUs (2 processes under ``torchrun``); NCCL on GPUs is not tested here.
Every rank applies the same averaged gradient with the same optimiser, so the replicas stay
identical without broadcasting parameters; rank 0 alone writes checkpoints (a shared file system
is assumed, as on one machine or a cluster with a shared home) and every rank reads them on resume.

Introduced in notebooks/07_mass_gpu.ipynb.
"""

from __future__ import annotations

import datetime
import inspect
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["PROCESS_GROUP_TIMEOUT", "DataParallel", "data_parallel_from_env", "local_device"]

T = TypeVar("T")

PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=60)
"""How long a collective (a barrier, an all-reduce) waits for the other ranks before it fails.

Long on purpose: ``python -m mass_ref train`` has rank 0 alone download and cache the model (and a
benchmark) while every other rank waits in a barrier, and a hub model of a few GB can take longer than
torch's default (10 minutes for NCCL), which would kill the waiting ranks. A rank that really hangs is
then noticed after an hour instead."""
_TAKES_DEVICE_ID = "device_id" in inspect.signature(dist.init_process_group).parameters  # torch >= 2.3


@dataclass(frozen=True)
class DataParallel:
    """This process's place among ``world_size`` data-parallel ranks (``DataParallel()``: a single process).

    Attributes:
        rank: 0..world_size−1; rank 0 is the one that writes files and shows progress.
        world_size: the number of ranks R.
    """

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise ValueError(f"world_size must be an integer >= 1; got {self.world_size!r}.")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be an integer in 0..{self.world_size - 1}; got {self.rank!r}.")

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        """Raise unless the ranks can split a batch of ``batch_size`` problems evenly."""
        if batch_size % self.world_size:
            raise ValueError(f"meta_batch_size={batch_size} is not divisible by the {self.world_size} data-parallel "
                             f"ranks; use a multiple of {self.world_size} (each rank takes an equal share).")

    def shard(self, items: Sequence[T]) -> tuple[int, list[T]]:
        """``(first_index, this rank's contiguous share of items)``."""
        self.check_batch(len(items))
        size = len(items) // self.world_size
        first = self.rank * size
        return first, list(items[first : first + size])

    def average_gradients(self, params: Sequence[Tensor]) -> None:
        """Average ``p.grad`` over the ranks, in place (one all-reduce of the flattened gradients).

        A rank without a gradient for some tensor contributes zeros; if no rank has one, ``.grad``
        stays None (so the optimiser skips the tensor, as a single process would).
        """
        if self.world_size == 1 or not params:
            return
        present = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
        dist.all_reduce(present)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p, g, count in zip(params, grads, present.tolist()):
            p.grad = None if count == 0 else flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Each diagnostic's mean over the ranks that have a number for it (NaN when none has).

        A mean of the ranks' means: for diagnostics that are themselves means over a varying number
        of items (e.g. valid practice examples) it weights ranks equally, not items; for logging only.
        """
        if self.world_size == 1:
            return values
        gathered: list[dict[str, float] | None] = [None] * self.world_size
        dist.all_gather_object(gathered, values)
        out = {}
        for key in values:
            numbers = [g[key] for g in gathered if g is not None and not math.isnan(g[key])]
            out[key] = sum(numbers) / len(numbers) if numbers else float("nan")
        return out

    def barrier(self) -> None:
        """Wait for every rank (a no-op for one process)."""
        if self.world_size > 1:
            dist.barrier()


def data_parallel_from_env(backend: str | None = None) -> DataParallel:
    """Join the process group a launcher (``torchrun``, ``accelerate launch``) describes in the environment.

    Without ``WORLD_SIZE`` (or with 1) this is a single process and nothing is initialised.
    ``backend`` defaults to NCCL when CUDA is available, else gloo. Each rank should then use
    ``cuda:LOCAL_RANK`` (see :func:`local_device`); with NCCL the group is bound to that device
    (``device_id``). Collectives wait up to :data:`PROCESS_GROUP_TIMEOUT` for the other ranks.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DataParallel()
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        options: dict[str, torch.device] = {}
        if torch.cuda.is_available():  # NCCL collectives (all_gather_object too) use the current device
            torch.cuda.set_device(local_device())
            if backend == "nccl" and _TAKES_DEVICE_ID:  # bind the communicator to this rank's GPU (barriers too)
                options["device_id"] = local_device()
        dist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT, **options)
    return DataParallel(rank=dist.get_rank(), world_size=dist.get_world_size())


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (LOCAL_RANK 0 without a launcher), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
