"""One command that checks chapter 7's GPU path on this machine and records what it measured.

    make gpu-check                         # on a CUDA machine: ≤ 10 minutes, writes results/gpu/gpu_check.json
    python scripts/gpu_check.py --dry      # the same steps on the CPU at small sizes (CI runs this)

It prints and records, in order:

1. **The card**: name, memory, compute capability, native bf16, fp16, the precision ``auto`` picks
   (:func:`mass_ref.lm.amp.resolve_precision`) and chapter 7's config for this card
   (:meth:`mass_ref.MassGpuSizes.config_for_card`).
2. **Memory**: the peak memory of one meta-gradient and one policy update at two sizes each, on a
   randomly initialised model of Qwen2.5-0.5B's shape (no download: memory does not depend on the
   weights' values), beside the memory model's prediction (:mod:`mass_ref.lm.memory`, docs/scaling.md).
   The CUDA allocator's peak on a GPU; the process's peak resident set on a CPU (``--dry``, a smaller shape).
3. **Training and evaluation** of ``configs/lm_mass_gpu_smoke.yaml`` on the device through the CLI's own
   entry point, once per exact meta-gradient mode (unroll, checkpointed, forward-over-reverse).
4. **Data parallel**: a 2-process NCCL run of the same config with ``torchrun`` when ≥ 2 GPUs exist
   (skipped, and recorded as skipped, otherwise).

``--dry`` writes ``build/gpu_check_dry/gpu_check.json`` instead (never committed). Exit status 1 when
any step failed; the JSON says which.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mass_ref import MassGpuSizes, cuda_memory_gib, profile_sizes  # noqa: E402
from mass_ref.lm.amp import native_bf16, resolve_precision  # noqa: E402

SMOKE_CONFIG = ROOT / "configs" / "lm_mass_gpu_smoke.yaml"
EXACT_MODES = ("unroll", "checkpointed", "forward_over_reverse")


def card_facts(device: torch.device) -> dict[str, Any]:
    """What the device is and what chapter 7 will do on it."""
    sizes: MassGpuSizes = profile_sizes("07_mass_gpu", "gpu")
    facts: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "precision_auto":
                             resolve_precision("auto", device), "gpu_count": torch.cuda.device_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 2),
                     capability=f"{props.major}.{props.minor}", native_bf16=native_bf16(device),
                     fp16=(props.major, props.minor) >= (5, 3), cuda=torch.version.cuda)
        facts["chapter_7_config"] = sizes.config_for_card(cuda_memory_gib(device.index))
    else:
        facts.update(name="cpu (dry run)", native_bf16=False, fp16=False,
                     chapter_7_config=sizes.config_for_card(None))
    return facts


QWEN_0_5B = {"vocab": 151936, "hidden": 896, "intermediate": 4864, "layers": 24, "heads": 14, "kv_heads": 2}
"""Qwen2.5-0.5B's shape (as a Llama: the q/k/v biases it lacks are a few kB)."""
GPU_CASES = [
    {"kind": "policy", "n": 4, "chunk": 4, "seq_len": 512, "supervised": 256, "model": QWEN_0_5B},
    {"kind": "policy", "n": 8, "chunk": 8, "seq_len": 512, "supervised": 256, "model": QWEN_0_5B},
    {"kind": "checkpointed", "m": 2, "steps": 2, "seq_len": 256, "supervised": 128, "model": QWEN_0_5B},
    {"kind": "checkpointed", "m": 4, "steps": 2, "seq_len": 256, "supervised": 128, "model": QWEN_0_5B},
]
DRY_CASES = [  # benchmarks/bench_memory_model.py's small Llama on the CPU
    {"kind": "policy", "n": 4, "chunk": 4, "seq_len": 64, "supervised": 32},
    {"kind": "policy", "n": 8, "chunk": 8, "seq_len": 64, "supervised": 32},
    {"kind": "checkpointed", "m": 4, "steps": 2, "seq_len": 64, "supervised": 32},
    {"kind": "checkpointed", "m": 8, "steps": 2, "seq_len": 96, "supervised": 16},
]


def memory_checks(device: torch.device, dry: bool) -> list[dict[str, Any]]:
    """Measured and predicted peaks of a policy update and a meta-gradient at two sizes each (fp32).

    Each case runs in a fresh process (benchmarks/bench_memory_model.py); the peak is above the weights
    (the CUDA allocator's, or the resident set's on a CPU). A case is within the model when
    predicted/measured lies in [0.75, 1.25], the bar the CPU tests hold the model to.
    """
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_memory_model import in_fresh_process

    rows = []
    for row in in_fresh_process(DRY_CASES if dry else GPU_CASES, device.type):
        ratio = row["predicted"] / row["measured"]
        rows.append({"phase": "policy_update" if row["kind"] == "policy" else "meta_gradient",
                     **{k: v for k, v in row.items() if k not in ("model", "measured", "predicted")},
                     "measured_bytes": row["measured"], "predicted_bytes": row["predicted"],
                     "measured_gib": round(row["measured"] / 2**30, 3), "predicted_gib": round(row["predicted"] / 2**30, 3),
                     "ratio": round(ratio, 3), "ok": 0.75 <= ratio <= 1.25})
    return rows


def smoke_runs(device: torch.device, out: Path) -> list[dict[str, Any]]:
    """Train and evaluate the gpu smoke config once per exact meta-gradient mode, via the CLI's ``main``."""
    from mass_ref.__main__ import main

    rows = []
    base = yaml.safe_load(SMOKE_CONFIG.read_text())
    for mode in EXACT_MODES:
        config = {**base, "output_dir": str(out / mode), "cache_dir": str(out / "cache"),
                  "model": {**base["model"], "device": device.type},
                  "mass": {**base["mass"], "meta_gradient": mode}}
        path = out / f"{mode}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        status = [main(["train", "--config", str(path), "--no-progress"]),
                  main(["evaluate", "--config", str(path), "--no-progress"])]
        row: dict[str, Any] = {"meta_gradient": mode, "exit_status": status,
                               "seconds": round(time.perf_counter() - started, 1)}
        if device.type == "cuda":
            row["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        evaluation = out / mode / "eval.json"
        report = json.loads(evaluation.read_text()) if evaluation.is_file() else {}
        row["accuracy"] = {k: v for k, v in report.items() if k.startswith("acc_") and not k.endswith("ci95")
                           and "_minus_" not in k}
        row["precision"] = report.get("precision")
        row["ok"] = status == [0, 0] and bool(row["accuracy"])
        rows.append(row)
    return rows


def nccl_run(out: Path) -> dict[str, Any]:
    """A 2-process data-parallel training run under ``torchrun`` (NCCL) when two GPUs exist."""
    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} CUDA device(s); data parallelism needs 2"}
    base = yaml.safe_load(SMOKE_CONFIG.read_text())
    path = out / "nccl.yaml"
    path.write_text(yaml.safe_dump({**base, "output_dir": str(out / "nccl"), "cache_dir": str(out / "cache")},
                                   sort_keys=False))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mass_ref",
                           "train", "--config", str(path), "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    return {"exit_status": done.returncode, "seconds": round(time.perf_counter() - started, 1),
            "ok": done.returncode == 0, "stderr_tail": done.stderr[-2000:]}


def _step(name: str, fn: Callable[[], Any], record: dict[str, Any]) -> None:
    """Run one step, print what it returned, and record it (or the error) under ``name``."""
    print(f"\n== {name}", flush=True)
    try:
        record[name] = fn()
    except Exception:  # noqa: BLE001 - a failed step is recorded and the check goes on to the next one
        record[name] = {"ok": False, "error": traceback.format_exc(limit=5)}
    print(json.dumps(record[name], indent=1, default=str), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="run every step on the CPU at small sizes")
    args = parser.parse_args()
    if not args.dry and not torch.cuda.is_available():
        parser.error("no CUDA device here (torch.cuda.is_available() is False); run with --dry to check the code "
                     "path on the CPU.")
    device = torch.device("cpu") if args.dry else torch.device("cuda", torch.cuda.current_device())
    target = ROOT / ("build/gpu_check_dry" if args.dry else "results/gpu") / "gpu_check.json"
    out = ROOT / "build" / ("gpu_check_dry" if args.dry else "gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # the smoke config's paths are relative to the repository root
    started = time.perf_counter()
    record: dict[str, Any] = {"dry": args.dry}
    _step("card", lambda: card_facts(device), record)
    _step("memory", lambda: memory_checks(device, args.dry), record)
    _step("smoke_runs", lambda: smoke_runs(device, out), record)
    _step("nccl", lambda: nccl_run(out), record)
    record["seconds"] = round(time.perf_counter() - started, 1)
    failed = [name for name in ("card", "memory", "smoke_runs", "nccl") if not _ok(record[name])]
    record["failed"] = failed
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    tmp.replace(target)  # atomic: an interrupted check leaves the previous file whole
    print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all steps passed'} in {record['seconds']} s; "
          f"wrote {target.relative_to(ROOT)}")
    return 1 if failed else 0


def _ok(result: Any) -> bool:
    if isinstance(result, list):
        return all(_ok(r) for r in result)
    return not (isinstance(result, dict) and result.get("ok") is False)


if __name__ == "__main__":
    sys.exit(main())
