"""Time and peak memory of the meta-gradient modes of ``mass_ref.metagrad`` against inner steps K.

    python benchmarks/bench_metagrad.py [--model tiny|smollm2] [--steps 1 2 4 8] [--m 12]
                                        [--modes unroll checkpointed ...] [--threads N] [--cache-dir DIR]

Each (mode, K) runs in a fresh Python process, so allocator caches of one measurement cannot hide
the next one's memory. Memory is what the call adds at its peak: on a GPU the CUDA allocator's
peak, on a Linux CPU the resident-set high-water mark (``/proc/self/clear_refs``, ``VmHWM``),
which is coarse: a few MB of activations (the tiny LM) are within its noise, SmolLM2's are not.
The model is the cpu profile's tiny LM (shipped with the package) or SmolLM2-135M-Instruct, with
LoRA r=4 on every linear layer; one call = K weighted SGD steps on m examples, then ∂L_out/∂w.
Figures are printed, never asserted. Measured on 2 CPU cores (torch 2.13, SmolLM2, m = 6): peak
6.3 / 20.5 GB for ``unroll`` at K = 1 / 4, 7.9 / 8.2 GB ``checkpointed``, 11.2 / 12.1 GB
``forward_over_reverse``; ``unroll`` at K = 8 does not fit in 23 GB.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mass_ref.metagrad import META_GRADIENT_MODES


def _rss_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def measure_one(model_name: str, mode: str, num_steps: int, m: int, cache_dir: Path) -> dict:
    """Set up the model and batch, then time one meta-gradient and measure what it adds at its peak."""
    from mass_ref import project_root
    from mass_ref.lm import (ALL_LINEAR, LMModelSpec, lora_parameters, load_lm_for_mass, sft_batch,
                             sft_losses_per_example, task_problems)
    from mass_ref.metagrad import weight_meta_gradient

    spec = LMModelSpec(name=model_name, lora_targets=ALL_LINEAR)
    root = project_root() / "build" / "cache" if model_name == "tiny" else cache_dir
    model, tokenizer, fmt = load_lm_for_mass(spec, root, progress=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    problems = task_problems(spec.tiny, m + 1, split="train", seed=5)
    pairs = [fmt.solve_pair(p.question, p.solution) for p in problems]
    support = sft_batch(tokenizer, pairs[:m], add_bos=fmt.add_bos).to(device)
    query = sft_batch(tokenizer, pairs[m:], add_bos=fmt.add_bos).to(device)
    params = {n: t.detach() for n, t in lora_parameters(model).items()}

    def call():
        return weight_meta_gradient(model, sft_losses_per_example, support,
                                    lambda forward: sft_losses_per_example(forward, query).sum(),
                                    weights=torch.full((m,), 1 / m, device=device), inner_lr=1.0,
                                    num_steps=num_steps, params=params, mode=mode,
                                    truncate=1 if mode == "truncated" else None)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current resident set
        before = _rss_kib("VmRSS") * 1024
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_kib("VmHWM") * 1024)
    return {"mode": mode, "K": num_steps, "seconds": seconds, "peak_mb": (peak - before) / 2**20,
            "device": device.type}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="inner steps K")
    parser.add_argument("--modes", nargs="+", default=list(META_GRADIENT_MODES), choices=META_GRADIENT_MODES)
    parser.add_argument("--m", type=int, default=12, help="examples in the inner batch")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each run")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "mass_ref_cache",
                        help="where SmolLM2 is converted once (default: %(default)s)")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "K"), help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args()
    if args.m < 1 or min(args.steps) < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--m, every --steps value and --threads must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure_one(args.model, args.one[0], int(args.one[1]), args.m, args.cache_dir)))
        return
    print(f"torch {torch.__version__}, {args.model}, m = {args.m}; one fresh process per row")
    print(f"{'mode':22s} {'K':>3s} {'seconds':>9s} {'peak MB':>9s}")
    for mode in args.modes:
        for k in args.steps:
            child = [sys.executable, __file__, "--model", args.model, "--m", str(args.m), "--cache-dir",
                     str(args.cache_dir), "--one", mode, str(k)]
            if args.threads:
                child += ["--threads", str(args.threads)]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            row = json.loads(out)
            print(f"{mode:22s} {k:3d} {row['seconds']:9.2f} {row['peak_mb']:9.1f}   ({row['device']})", flush=True)


if __name__ == "__main__":
    main()
