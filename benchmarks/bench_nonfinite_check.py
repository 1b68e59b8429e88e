"""What the inner loop's non-finite check costs: ``sgd_trajectory`` with and without it.

    python benchmarks/bench_nonfinite_check.py [--repeats 300] [--steps 5] [--threads N] [--device cpu|cuda]

The check (:func:`mass_ref.inner.check_finite_trajectory`) runs once per call after the last step:
one ``isfinite`` reduction per parameter tensor and over the K losses, and one host sync. "without"
replaces it by a no-op for the timing (the learning-rate check, a few float comparisons, stays).
Cases: the sine MLP (1-40-40-1, 10 points) with and without a graph, a wider MLP (64-256-256-1,
64 points, 8 tensors), and the ``higher`` backend of ``inner_adapt`` on the sine MLP. Prints
microseconds per call and the overhead; timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
from torch import nn

import mass_ref._higher_backend
import mass_ref.inner
from mass_ref import inner_adapt, inner_loss_of, mse_per_example, sgd_trajectory, sine_mlp

Case = Callable[[], object]


def mlp(sizes: list[int], device: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(device)


def kernel_case(model: nn.Module, n: int, steps: int, differentiable: bool, device: str) -> Case:
    x = torch.randn(n, model[0].in_features, device=device)
    y = torch.randn(n, 1, device=device)
    params = {name: p.detach().requires_grad_(differentiable) for name, p in model.named_parameters()}
    loss = inner_loss_of(model, mse_per_example, (x, y))

    def run() -> object:
        trajectory = sgd_trajectory(loss, params, inner_lr=1e-3, num_steps=steps, differentiable=differentiable)
        if device == "cuda":
            torch.cuda.synchronize()  # both variants pay for the queued work, not only the checked one
        return trajectory

    return run


def higher_case(steps: int) -> Case:
    model = sine_mlp()
    x = torch.linspace(-5, 5, 10).view(-1, 1)
    return lambda: inner_adapt(model, mse_per_example, (x, torch.sin(x)), inner_lr=1e-3, num_steps=steps,
                               backend="higher")


def microseconds(case: Case, repeats: int) -> float:
    for _ in range(max(3, repeats // 10)):  # warm-up
        case()
    start = time.perf_counter()
    for _ in range(repeats):
        case()
    return 1e6 * (time.perf_counter() - start) / repeats


def timed(case: Case, repeats: int, rounds: int = 3) -> tuple[float, float]:
    """Best of ``rounds`` alternating rounds, with and without the check (alternating evens out drift)."""
    modules = (mass_ref.inner, mass_ref._higher_backend)  # both look the check up at call time
    real = mass_ref.inner.check_finite_trajectory
    with_check, without = [], []
    for _ in range(rounds):
        with_check.append(microseconds(case, repeats))
        for module in modules:
            module.check_finite_trajectory = lambda *args, **kwargs: None
        try:
            without.append(microseconds(case, repeats))
        finally:
            for module in modules:
                module.check_finite_trajectory = real
    return min(with_check), min(without)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, "
          f"{platform.processor() or platform.machine()}; K={args.steps} inner steps, best of 3 x {args.repeats}\n")
    cases = {
        "sine MLP, no graph": kernel_case(sine_mlp().to(args.device), 10, args.steps, False, args.device),
        "sine MLP, graph": kernel_case(sine_mlp().to(args.device), 10, args.steps, True, args.device),
        "64-256-256-1, no graph": kernel_case(mlp([64, 256, 256, 1], args.device), 64, args.steps, False, args.device),
    }
    if args.device == "cpu":
        cases["higher, sine MLP"] = higher_case(args.steps)
    print(f"{'case':24s} {'with check':>12s} {'without':>12s} {'overhead':>9s}")
    for name, case in cases.items():
        checked, unchecked = timed(case, args.repeats)
        print(f"{name:24s} {checked:9.1f} µs {unchecked:9.1f} µs {100 * (checked / unchecked - 1):+8.1f}%")
    # the difference above is within a busy machine's noise; the check timed alone is the robust figure
    for name, model in (("sine MLP", sine_mlp()), ("64-256-256-1", mlp([64, 256, 256, 1], "cpu"))):
        final = {n: p.detach().to(args.device) for n, p in model.named_parameters()}
        losses = [torch.tensor(1.0, device=args.device) for _ in range(args.steps)]
        alone = microseconds(lambda: mass_ref.inner.check_finite_trajectory(losses, final, locate=None),
                             10 * args.repeats)
        print(f"the check alone, {name} ({len(final)} tensors, {args.steps} losses): {alone:.1f} µs per call")


if __name__ == "__main__":
    main()
