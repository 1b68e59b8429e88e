"""benchmarks/bench_notebook_peaks.py executes a notebook in a child process and reports its kernel's peak RAM."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mass_ref import project_root

SCRIPT = project_root() / "benchmarks" / "bench_notebook_peaks.py"


@pytest.mark.slow  # a kernel runs chapter 7's smoke profile: ~30 s on 2 cores
def test_the_benchmark_reports_a_kernel_sized_peak_for_each_notebook() -> None:
    notebook = project_root() / "notebooks" / "07_mass_gpu.ipynb"
    out = subprocess.run([sys.executable, str(SCRIPT), "--profile", "smoke", str(notebook)], check=True,
                         capture_output=True, text=True).stdout
    (row,) = [line.split() for line in out.splitlines() if line.startswith("07_mass_gpu")]
    peak, unit = float(row[1]), row[2]
    # the kernel imports torch and transformers and trains a tiny LM: far above the parent's few MB, far below 8 GiB
    assert unit == "GiB" and 0.2 < peak < 8, out
    assert "FAILED" not in out
