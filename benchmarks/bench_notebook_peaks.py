"""Peak RAM and wall time of each notebook in one profile, each executed headless in a process of its own.

    python benchmarks/bench_notebook_peaks.py [--profile cpu] [notebooks/05_mass_llm.ipynb ...]

Each notebook runs through ``scripts/run_notebooks.py`` (outputs to build/<profile>/notebooks/, the
stored notebooks are not touched). The peak is the kernel's largest resident set size (``ru_maxrss`` of the
child's process tree, as ``/usr/bin/time -v`` reports it); compare it with a learner's machine, e.g. Colab's
free runtime (12.7 GiB of RAM). Runs that resume cached work (build/cache/) are faster and may peak lower
than a first run: measure from a fresh clone. Linux and macOS; figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_of(notebook: Path, profile: str) -> tuple[int, float, float]:
    """``(exit status, peak GiB, wall seconds)`` of executing ``notebook`` in a child process."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_notebooks.py"), "--profile", profile,
                              str(notebook)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here; tell Popen so it does not wait again
    # ru_maxrss is KiB on Linux and bytes on macOS
    peak = usage.ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20)
    return child.returncode, peak, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb, in order")
    parser.add_argument("--profile", default="cpu", help="smoke | cpu | gpu (default: cpu)")
    args = parser.parse_args()
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    print(f"profile {args.profile}, {os.cpu_count()} cores")
    print(f"{'notebook':36s} {'peak RAM':>10s} {'wall':>9s}")
    failed = 0
    for notebook in notebooks:
        code, peak, seconds = peak_of(notebook, args.profile)
        failed += code != 0
        print(f"{notebook.stem:36s} {peak:7.2f} GiB {seconds / 60:6.1f} min" + ("" if code == 0 else f"  FAILED ({code})"),
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
