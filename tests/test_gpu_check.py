"""scripts/gpu_check.py --dry: the one-command GPU check runs every step on the CPU, so CI keeps it working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_dry_gpu_check_runs_every_step_and_records_it() -> None:
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "--dry"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((ROOT / "build" / "gpu_check_dry" / "gpu_check.json").read_text())
    assert record["dry"] is True and record["failed"] == []
    assert record["card"]["precision_auto"] == "fp32" and record["card"]["chapter_7_config"] == "configs/lm_mass_gpu.yaml"
    assert [row["meta_gradient"] for row in record["smoke_runs"]] == ["unroll", "checkpointed", "forward_over_reverse"]
    assert all(row["ok"] and "acc_mass" in row["accuracy"] and row["precision"] == "fp32"
               for row in record["smoke_runs"])
    assert "skipped" in record["nccl"]
    kinds = {row["phase"] for row in record["memory"]}
    assert kinds == {"meta_gradient", "policy_update"} and len(record["memory"]) == 4
    for row in record["memory"]:  # the memory model predicts the measured peak within 25% (docs/scaling.md)
        assert 0.75 <= row["predicted_bytes"] / row["measured_bytes"] <= 1.25, row


def test_gpu_check_without_cuda_and_without_dry_says_how_to_run_it() -> None:
    done = subprocess.run([sys.executable, "scripts/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2 and "--dry" in done.stderr
