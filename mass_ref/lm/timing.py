"""What a meta-step costs compared with a plain LoRA SFT step, on the same batch.

On a batch of m examples (an :class:`~mass_ref.lm.sft.SFTBatch`) and a held-out query batch:

* **SFT step**: L(φ) = (1/m) Σ_i ℓ_i(φ); one forward, one backward w.r.t. the LoRA tensors φ,
  one Adam update. This is what test-time training pays per step.
* **Meta-step through K inner steps** (MASS's outer update): weights w (requires grad),

      φ_K = inner_adapt(φ_0, w)       (K differentiable SGD steps, ``backend="torch.func"``)
      L_out = mean_j ℓ_j^query(φ_K)
      ∂L_out/∂w [m],  ∂L_out/∂φ_0      (one ``torch.autograd.grad``: second order through φ_K)

The ratio t_meta / t_sft is the overhead of exact (second-order) meta-gradients; on SmolLM2 with
m = 6, ``benchmarks/bench_lm_meta_step.py`` measured 3.3× for K = 1 on one CPU thread (see README). Each timing is the median of ``repeats`` runs after
one untimed warm-up; the model is left exactly as it was (the Adam step is undone).

Introduced in notebooks/04_lm_test_time_training.ipynb.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mass_ref.lm.models import inner_adapt_lora, require_eager_attention
from mass_ref.lm.sft import SFTBatch, sft_losses_per_example
from mass_ref.lm.ttt import lora_sft_steps_on_batch, restored_lora

__all__ = ["time_sft_and_meta_step"]


def time_sft_and_meta_step(
    model: nn.Module,
    batch: SFTBatch,
    query: SFTBatch,
    *,
    inner_lr: float = 1e-2,
    sft_lr: float = 1e-2,
    num_steps: Sequence[int] = (1, 2),
    repeats: int = 3,
) -> dict[str, Any]:
    """Seconds per LoRA SFT step and per second-order meta-step (for each K in ``num_steps``).

    Args:
        model: a peft model with LoRA tensors and eager attention.
        batch: the m inner (support) examples.
        query: the held-out example(s) whose post-update loss is the outer loss.
        inner_lr: α of the differentiable inner SGD steps.
        sft_lr: Adam's step size in the plain SFT step.
        num_steps: the inner-step counts K to time; the first one defines the headline ratio.
        repeats: timed runs per measurement (median reported), after one warm-up.

    Returns:
        A JSON-ready dict: ``m``, ``tokens`` (real tokens in ``batch``), ``repeats``,
        ``sft_step_s``, ``meta_step_s`` ``{str(K): seconds}``, ``ratio`` ``{str(K): t_meta / t_sft}``
        and ``meta_step_over_sft_step_time_ratio`` (the ratio for ``num_steps[0]``).

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1; got {repeats!r}.")
    if not num_steps or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in num_steps):
        raise ValueError(f"num_steps must be a non-empty sequence of integers >= 1; got {num_steps!r}.")
    require_eager_attention(model)
    with restored_lora(model) as lora:  # the LoRA tensors are left exactly as they were
        params = list(lora.values())
        device, dtype = params[0].device, params[0].dtype
        batch, query = batch.to(device), query.to(device)
        m = len(batch)

        def sft_step() -> None:
            lora_sft_steps_on_batch(model, batch, num_steps=1, lr=sft_lr, optimizer="adam")

        def meta_step(k: int) -> Callable[[], None]:
            def run() -> None:
                weights = torch.full((m,), 1.0 / m, dtype=dtype, device=device, requires_grad=True)
                adapted = inner_adapt_lora(model, batch, inner_lr=inner_lr, num_steps=k, weights=weights, params=lora)
                outer = sft_losses_per_example(adapted, query).mean()
                torch.autograd.grad(outer, [weights, *params])

            return run

        sft_s = _median_seconds(sft_step, repeats, device)
        meta_s = {str(k): _median_seconds(meta_step(k), repeats, device) for k in num_steps}
    ratio = {k: s / sft_s for k, s in meta_s.items()}
    return {
        "m": m,
        "tokens": int(batch.attention_mask.sum()),
        "repeats": repeats,
        "sft_step_s": sft_s,
        "meta_step_s": meta_s,
        "ratio": ratio,
        "meta_step_over_sft_step_time_ratio": ratio[str(num_steps[0])],
    }


def _median_seconds(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    fn()  # warm-up (allocator, kernels, lazy imports)
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
