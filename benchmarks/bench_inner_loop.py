"""Meta-iteration time on the chapter-1 setup: higher's per-task loop vs one torch.func vmap.

    python benchmarks/bench_inner_loop.py [--iterations 200] [--meta-batch-size 25] [--threads N]

A meta-iteration is what `meta_train_maml` does per outer step: sample a meta-batch of sine tasks
(K=10 support + 10 query), compute the MAML meta-gradient through one inner SGD step, take an
Adam step. Prints seconds per iteration for each method (exact and first order) and their ratio.
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from mass_ref import meta_train_maml, seed_everything, sine_mlp


def seconds_per_iteration(method: str, first_order: bool, args: argparse.Namespace) -> float:
    torch.manual_seed(args.seed)
    model = sine_mlp()
    generator = seed_everything(args.seed)
    kwargs = dict(meta_batch_size=args.meta_batch_size, k_shot=10, inner_lr=0.01, outer_lr=1e-3,
                  generator=generator, first_order=first_order, method=method, progress=False)
    meta_train_maml(model, iterations=20, **kwargs)  # warm-up
    start = time.perf_counter()
    meta_train_maml(model, iterations=args.iterations, **kwargs)
    return (time.perf_counter() - start) / args.iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--meta-batch-size", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.iterations < 1 or args.meta_batch_size < 1:
        parser.error("--iterations and --meta-batch-size must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"MAML sine, MLP 1-40-40-1, meta-batch {args.meta_batch_size} tasks, K=10, 1 inner step, "
          f"{args.iterations} timed iterations\n")
    print(f"{'meta-gradient':14s} {'higher loop':>14s} {'torch.func vmap':>16s} {'ratio':>8s}")
    for first_order in (False, True):
        loop = seconds_per_iteration("higher_loop", first_order, args)
        vmap = seconds_per_iteration("vmap", first_order, args)
        label = "first-order" if first_order else "exact"
        print(f"{label:14s} {1e3 * loop:11.2f} ms {1e3 * vmap:13.2f} ms {loop / vmap:7.1f}x")


if __name__ == "__main__":
    main()
