"""The compute precision of an LM meta-step, chosen per device: bf16 autocast where it is native, else fp32.

``LMMassConfig.precision`` is one of :data:`PRECISIONS`:

* ``"auto"``: bf16 autocast on a CUDA card with native bf16 (compute capability >= 8.0: A100, H100,
  RTX 30xx/40xx, L4), fp32 everywhere else (a T4 or V100, whose bf16 is emulated and no faster; the CPU).
* ``"bf16"``: bf16 autocast wherever it runs (on the CPU and on pre-Ampere cards it is slower, not faster;
  use it there only to reproduce a bf16 run).
* ``"fp32"``: no autocast.

Autocast keeps the weights in their own dtype and runs matmuls in bf16; the LoRA tensors (the
trainable φ) and the scorer are kept fp32 whatever the base model's dtype, so Adam's small updates
are not rounded away and the scorer's weights s_i stay fp32 (:func:`fp32_scope`).

fp16 autocast is not offered: its small range needs loss scaling, and scaling the second-order
meta-gradient (a gradient through K inner gradient steps) is not implemented here. On cards without
native bf16, "auto" uses fp32 instead.

Introduced in notebooks/07_mass_gpu.ipynb.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

PRECISIONS = ("auto", "bf16", "fp32")
"""The values of ``LMMassConfig.precision``."""


def check_precision(precision: str) -> None:
    """Raise ``ValueError`` naming the allowed values when ``precision`` is not one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        hint = " (fp16 needs loss scaling through the second-order meta-gradient, not implemented: use fp32)" \
            if precision in ("fp16", "float16") else ""
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}{hint}.")


def native_bf16(device: torch.device | str) -> bool:
    """True on a CUDA device of compute capability >= 8.0 (bf16 tensor cores); False on CPUs and older cards."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The concrete precision, "bf16" or "fp32", of ``precision`` on ``device`` (see the module docstring)."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to bf16 when ``precision`` resolves to "bf16" on ``device``, else a no-op context."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def fp32_scope(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """Autocast switched off inside the block (the scorer: its weights s_i must stay fp32)."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)
