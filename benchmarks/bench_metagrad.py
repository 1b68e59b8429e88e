"""Time and peak memory of the meta-gradient modes of ``mass_ref.metagrad`` against inner steps K.

    python benchmarks/bench_metagrad.py [--model tiny|smollm2] [--steps 1 2 4 8] [--m 12] [--seq-len L]
                                        [--modes unroll checkpointed ...] [--threads N] [--cache-dir DIR]
                                        [--json OUT]

Each (mode, K) runs in a fresh Python process (:func:`mass_ref.lm.metagrad_cost.cost_in_fresh_process`),
so allocator caches of one measurement cannot hide the next one's memory: on a GPU the CUDA
allocator's peak, on a Linux CPU the resident-set high-water mark (coarse to a few MB). The model
is the cpu profile's tiny LM (shipped with the package) or SmolLM2-135M-Instruct, with LoRA r=4 on
every linear layer; one call = K weighted SGD steps on m examples, then ∂L_out/∂w. ``--json``
also writes the rows, after each one (notebook 06 plots the committed SmolLM2 files), and resumes:
rows already in the file (same model, mode, K, m and length) are reused, not measured again.
Figures are printed, never asserted. A row that fails (e.g. killed for memory) is printed as such
and the table goes on.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from mass_ref.lm.metagrad_cost import cost_in_fresh_process, load_costs, save_costs
from mass_ref.metagrad import META_GRADIENT_MODES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="inner steps K")
    parser.add_argument("--modes", nargs="+", default=list(META_GRADIENT_MODES), choices=META_GRADIENT_MODES)
    parser.add_argument("--max-unroll-steps", type=int, default=None,
                        help="skip unroll rows above this K (they may not fit in memory)")
    parser.add_argument("--m", type=int, default=12, help="examples in the inner batch")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per example (default: one problem)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each run")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "mass_ref_cache",
                        help="model cache: the tiny LM is copied there, SmolLM2 converted once (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the rows and the machine to this file")
    args = parser.parse_args()
    if args.m < 1 or min(args.steps) < 1 or (args.threads is not None and args.threads < 1) or \
            (args.seq_len is not None and args.seq_len < 8):
        parser.error("--m, every --steps value and --threads must be >= 1, and --seq-len >= 8")
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, {args.model}, m = {args.m}, {threads} threads; one fresh process per row")
    print(f"{'mode':22s} {'K':>3s} {'tokens':>6s} {'seconds':>9s} {'peak MB':>9s}")
    rows = load_costs(args.json) if args.json else []
    for mode in args.modes:
        for k in args.steps:
            known = [c for c in rows if (c.model, c.mode, c.K, c.m) == (args.model, mode, k, args.m)
                     and (args.seq_len is None or c.seq_len == args.seq_len)]
            if known:
                cost = known[0]
                print(f"{mode:22s} {k:3d} {cost.seq_len:6d} {cost.seconds:9.2f} {cost.peak_mb:9.1f}   ({cost.device}, "
                      f"from {args.json})", flush=True)
                continue
            if mode == "unroll" and args.max_unroll_steps is not None and k > args.max_unroll_steps:
                print(f"{mode:22s} {k:3d}   skipped (--max-unroll-steps {args.max_unroll_steps})", flush=True)
                continue
            try:
                cost = cost_in_fresh_process(args.model, mode, k, m=args.m, seq_len=args.seq_len,
                                             cache_dir=args.cache_dir, threads=threads)
            except RuntimeError as error:
                print(f"{mode:22s} {k:3d}   failed: {str(error).splitlines()[-1][:80]}", flush=True)
                continue
            rows.append(cost)
            print(f"{mode:22s} {k:3d} {cost.seq_len:6d} {cost.seconds:9.2f} {cost.peak_mb:9.1f}   ({cost.device})",
                  flush=True)
            if args.json:  # after every row: a long run that is stopped keeps what it measured
                save_costs(args.json, rows, threads=threads)


if __name__ == "__main__":
    main()
