"""benchmarks/bench_metagrad.py runs end to end (one fresh child process per row) and rejects bad sizes."""

from __future__ import annotations

import subprocess
import sys

from mass_ref import project_root

SCRIPT = project_root() / "benchmarks" / "bench_metagrad.py"


def test_the_benchmark_prints_one_row_per_mode_and_step() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--steps", "1", "--m", "2", "--threads", "1",
                          "--modes", "unroll", "checkpointed"], check=True, capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith(("unroll ", "checkpointed "))]
    assert [r[:2] for r in rows] == [["unroll", "1"], ["checkpointed", "1"]]
    assert all(float(r[2]) > 0 for r in rows)  # seconds


def test_bad_sizes_fail_with_a_message_before_any_work() -> None:
    run = subprocess.run([sys.executable, str(SCRIPT), "--m", "0"], capture_output=True, text=True)
    assert run.returncode == 2 and "--m, every --steps value and --threads must be >= 1" in run.stderr
