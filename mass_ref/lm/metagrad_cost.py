"""What a meta-gradient of the LoRA inner loop costs: seconds and peak memory, one fresh process per measurement.

:func:`measure_meta_gradient_cost` sets up a model (the cpu profile's tiny LM, or SmolLM2-135M) with
LoRA r=4 on every linear layer, m support examples of about ``seq_len`` tokens, and times one call
of :func:`~mass_ref.metagrad.weight_meta_gradient` (K weighted SGD steps, then ∂L_out/∂w).
Memory is what the call adds at its peak: on a GPU the CUDA allocator's peak; on a Linux CPU the
resident-set high-water mark (``/proc/self/clear_refs`` then ``VmHWM``), coarse to a few MB.
:func:`cost_in_fresh_process` runs it in a new interpreter (``python -m mass_ref.lm.metagrad_cost``),
because in a long-lived process (a notebook kernel, pytest) the allocator keeps memory that earlier
work freed and the high-water mark cannot be reset reliably. ``benchmarks/bench_metagrad.py`` prints
a table of these; notebook 06 plots them.

Introduced in notebooks/06_scalable_metagradients.ipynb.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mass_ref.metagrad import weight_meta_gradient

if TYPE_CHECKING:  # the LM stack loads transformers; import it only where it runs
    from transformers import PreTrainedTokenizerBase

    from mass_ref.lm.formats import PromptFormat
    from mass_ref.lm.sft import SFTBatch

__all__ = ["SMOLLM2_COSTS", "SMOLLM2_LENGTH_COSTS", "DoesNotFit", "MetaGradientCost", "cost_in_fresh_process",
           "costs_that_fit", "load_costs", "measure_meta_gradient_cost", "plot_costs", "save_costs", "support_of_length"]

MODELS = ("tiny", "smollm2")
SMOLLM2_COSTS = Path(__file__).resolve().parent / "costs" / "metagrad_smollm2.json"
"""SmolLM2-135M's meta-gradient costs against K, measured on 2 CPU cores and shipped with the package (chapter 6
reads them where it cannot measure live): ``benchmarks/bench_metagrad.py --model smollm2 --m 6 --json <this file>``."""
SMOLLM2_LENGTH_COSTS = SMOLLM2_COSTS.with_name("metagrad_smollm2_length.json")
"""The same against tokens per example at K = 2."""


@dataclass(frozen=True)
class MetaGradientCost:
    """One measurement. Attributes: model, mode, K, m, seq_len (tokens per example, padded), seconds,
    peak_mb (what the call added at its peak, MiB), device ("cpu" or "cuda")."""

    model: str
    mode: str
    K: int
    m: int
    seq_len: int
    seconds: float
    peak_mb: float
    device: str


def support_of_length(
    tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, problems: Sequence[Any], m: int, seq_len: int | None
) -> SFTBatch:
    """m SFT examples from ``problems[:m]``; with ``seq_len``, each answer is the problem's solution
    followed by the next problems' solutions, cut so the example is exactly ``seq_len`` tokens (a
    prompt longer than that keeps its full length plus one answer token and eos)."""
    from mass_ref.lm.sft import bos_id, collate_sft, encode_text, eos_and_pad_ids, sft_batch  # sft's own tokenising

    pairs = [fmt.solve_pair(p.question, p.solution) for p in problems]
    if seq_len is None:
        return sft_batch(tokenizer, pairs[:m], add_bos=fmt.add_bos)
    eos, pad = eos_and_pad_ids(tokenizer)
    prompts, answers = [], []
    for i in range(m):
        prompt = ([bos_id(tokenizer)] if fmt.add_bos else []) + encode_text(tokenizer, pairs[i][0])
        answer: list[int] = []
        j = i
        while len(prompt) + len(answer) + 1 < seq_len:
            answer += encode_text(tokenizer, pairs[j % len(pairs)][1] + "\n")
            j += 1
        prompts.append(prompt)
        answers.append(answer[: max(1, seq_len - len(prompt) - 1)])
    return collate_sft(prompts, answers, pad_token_id=pad, eos_token_id=eos)


def _rss_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}: CPU memory is measured on Linux only.")
    return int(match.group(1))


def measure_meta_gradient_cost(
    model_name: str, mode: str, num_steps: int, *, m: int, seq_len: int | None = None,
    cache_dir: str | Path = "build/cache",
) -> MetaGradientCost:
    """Time one meta-gradient and measure the memory it adds (in this process: call it in a fresh one)."""
    from mass_ref.lm.spec import ALL_LINEAR, LMModelSpec, load_lm_for_mass
    from mass_ref.lm.models import lora_parameters
    from mass_ref.lm.sft import sft_batch, sft_losses_per_example
    from mass_ref.lm.tiny import task_problems

    if model_name not in MODELS:
        raise ValueError(f"model_name must be one of {MODELS}; got {model_name!r}.")
    spec = LMModelSpec(name=model_name, lora_targets=ALL_LINEAR)
    model, tokenizer, fmt = load_lm_for_mass(spec, cache_dir, progress=False)
    device = next(model.parameters()).device
    problems = task_problems(spec.tiny, m + 4, split="train", seed=5)
    support = support_of_length(tokenizer, fmt, problems[:-1], m, seq_len).to(device)
    query = sft_batch(tokenizer, [fmt.solve_pair(problems[-1].question, problems[-1].solution)],
                      add_bos=fmt.add_bos).to(device)
    params = {n: t.detach() for n, t in lora_parameters(model).items()}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current resident set
        before = _rss_kib("VmRSS") * 1024
    start = time.perf_counter()
    weight_meta_gradient(model, sft_losses_per_example, support,
                         lambda forward: sft_losses_per_example(forward, query).sum(),
                         weights=torch.full((m,), 1 / m, device=device), inner_lr=1.0, num_steps=num_steps,
                         params=params, mode=mode, truncate=1 if mode == "truncated" else None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_kib("VmHWM") * 1024
    return MetaGradientCost(model_name, mode, num_steps, m, support.input_ids.shape[1], seconds,
                            (peak - before) / 2**20, device.type)


class DoesNotFit(RuntimeError):
    """A measurement ran out of memory: the CUDA allocator said so, or the operating system killed the process."""


def cost_in_fresh_process(
    model_name: str, mode: str, num_steps: int, *, m: int, seq_len: int | None = None,
    cache_dir: str | Path = "build/cache", threads: int | None = None, timeout: float = 3600.0,
) -> MetaGradientCost:
    """:func:`measure_meta_gradient_cost` in a new Python process (``threads``: its torch threads).

    Raises:
        DoesNotFit: the child ran out of GPU memory, or was killed (SIGKILL: the kernel's out-of-memory killer).
        RuntimeError: the child failed otherwise or ran longer than ``timeout`` seconds.
    """
    command = [sys.executable, "-m", "mass_ref.lm.metagrad_cost", model_name, mode, str(num_steps), str(m),
               str(seq_len or 0), str(cache_dir), str(threads or 0)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"measuring {model_name}/{mode}/K={num_steps} took over {timeout:.0f} s") from error
    what = f"{model_name}/{mode}/K={num_steps}" + (f"/{seq_len} tokens" if seq_len else "")
    if result.returncode == -9:
        raise DoesNotFit(f"{what}: the process was killed (SIGKILL), most likely out of memory")
    if result.returncode != 0:
        raise RuntimeError(f"measuring {what} failed:\n{result.stderr[-2000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    if "out_of_memory" in row:
        raise DoesNotFit(f"{what}: {row['out_of_memory']}")
    return MetaGradientCost(**row)


def costs_that_fit(
    model_name: str, points: Sequence[tuple[str, int, int | None]], *, m: int, cache_dir: str | Path = "build/cache",
    threads: int | None = None, progress: bool = True,
) -> tuple[list[MetaGradientCost], list[str]]:
    """:func:`cost_in_fresh_process` for each ``(mode, K, seq_len)`` of ``points``; rows that run out of memory are
    left out and named instead, so that one sweep runs on any card (a 16 GB T4 cannot hold SmolLM2's K = 4 unroll).

    Returns:
        ``(costs, too_large)``: the measurements, and one line per point that did not fit.
    """
    from mass_ref.progress import progress_bar

    costs, too_large = [], []
    iterator = progress_bar(points, desc=f"{model_name}: fresh processes") if progress else points
    for mode, k, length in iterator:
        try:
            costs.append(cost_in_fresh_process(model_name, mode, k, m=m, seq_len=length, cache_dir=cache_dir,
                                               threads=threads))
        except DoesNotFit as error:
            too_large.append(str(error))
    return costs, too_large


def save_costs(path: str | Path, costs: list[MetaGradientCost], *, threads: int) -> Path:
    """Write measurements as ``{"machine": {...}, "rows": [...]}`` JSON (the docs render it as a table)."""
    import os
    import platform

    machine = {"torch": torch.__version__, "threads": threads, "cpu_count": os.cpu_count(),
               "processor": platform.processor() or platform.machine(),
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine, "rows": [asdict(c) for c in costs]}, indent=1) + "\n")
    return path


def load_costs(path: str | Path) -> list[MetaGradientCost]:
    """The measurements :func:`save_costs` wrote to ``path`` (empty when there is no such file)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [MetaGradientCost(**row) for row in json.loads(path.read_text())["rows"]]


def plot_costs(costs: list[MetaGradientCost], *, x: str, axes: Any, title: str) -> None:
    """Peak memory (left axis) and seconds (right axis) of each mode against ``x`` ("K" or "seq_len")."""
    memory_ax, time_ax = axes
    for mode in dict.fromkeys(c.mode for c in costs):
        rows = sorted((c for c in costs if c.mode == mode), key=lambda c: getattr(c, x))
        xs = [getattr(c, x) for c in rows]
        memory_ax.plot(xs, [c.peak_mb for c in rows], marker="o", label=mode)
        time_ax.plot(xs, [c.seconds for c in rows], marker="o", label=mode)
    label = {"K": "inner steps K", "seq_len": "tokens per example"}[x]
    ticks = sorted({getattr(c, x) for c in costs})
    for ax, unit in ((memory_ax, "peak memory added (MiB)"), (time_ax, "seconds per meta-gradient")):
        ax.set(xlabel=label, ylabel=unit, title=f"{title}: {unit.split(' (')[0]}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    memory_ax.legend(fontsize=8)


if __name__ == "__main__":  # the child of cost_in_fresh_process
    if len(sys.argv) != 8:
        sys.exit("usage: python -m mass_ref.lm.metagrad_cost MODEL MODE K M SEQ_LEN(0: natural) CACHE_DIR THREADS(0: "
                 "default); use cost_in_fresh_process or benchmarks/bench_metagrad.py instead")
    name, mode_, k, m_, length, cache, threads_ = sys.argv[1:8]
    if int(threads_):
        torch.set_num_threads(int(threads_))
    try:
        cost = measure_meta_gradient_cost(name, mode_, int(k), m=int(m_), seq_len=int(length) or None, cache_dir=cache)
    except torch.OutOfMemoryError as error:  # the card is too small for this point: say so, the sweep goes on
        print(json.dumps({"out_of_memory": str(error).splitlines()[0]}))
    else:
        print(json.dumps(asdict(cost)))
