"""Data-parallel meta-training: 2 gloo processes under torchrun × half the batch = 1 process × the full batch.

The CLI runs configs/lm_mass_gpu_smoke.yaml's code path (hub-style loading of the shipped tiny LM, the
checkpointed meta-gradient, layer checkpointing, per-problem seeds) in float64 on the tiny task family, where
the shipped LM writes parseable practice problems, so the scorer and the generator both get gradients.
In float64 the only differences between the runs are summation orders (~1e-15): Adam, which normalises each
gradient entry, would blow float32 noise in near-zero entries up to a full step of size lr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mass_ref import DataParallel, data_parallel_from_env
from mass_ref.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
GPU_SMOKE = yaml.safe_load((ROOT / "configs" / "lm_mass_gpu_smoke.yaml").read_text())


def test_shards_are_contiguous_equal_and_refuse_uneven_batches() -> None:
    items = list("abcdef")
    assert DataParallel(0, 2).shard(items) == (0, ["a", "b", "c"])
    assert DataParallel(1, 2).shard(items) == (3, ["d", "e", "f"])
    assert DataParallel().shard(items) == (0, items)
    with pytest.raises(ValueError, match="meta_batch_size=6 is not divisible by the 4"):
        DataParallel(1, 4).shard(items)
    for bad, match in ((dict(rank=2, world_size=2), "rank"), (dict(world_size=0), "world_size"),
                       (dict(rank=True, world_size=2), "rank")):
        with pytest.raises(ValueError, match=match):
            DataParallel(**bad)


def test_a_single_process_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parallel = data_parallel_from_env()
    assert parallel == DataParallel() and parallel.is_main
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    parallel.average_gradients([p])
    parallel.barrier()
    assert torch.equal(p.grad, torch.full((2,), 3.0)) and parallel.mean_over_ranks({"x": 1.0}) == {"x": 1.0}


@pytest.mark.parametrize("cuda", [False, True])
def test_the_process_group_waits_an_hour_and_nccl_is_bound_to_the_local_gpu(monkeypatch: pytest.MonkeyPatch,
                                                                            cuda: bool) -> None:
    """Rank 0 may be downloading the model while the others wait in a barrier: torch's default timeout
    (10 min for NCCL) would kill them."""
    import datetime

    import torch.distributed as dist

    from mass_ref.distributed import PROCESS_GROUP_TIMEOUT

    calls: list[dict[str, object]] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append({"set_device": device}))
    assert data_parallel_from_env() == DataParallel(rank=1, world_size=2)
    assert PROCESS_GROUP_TIMEOUT >= datetime.timedelta(minutes=60)
    if cuda:
        assert calls == [{"set_device": torch.device("cuda", 1)},
                         {"backend": "nccl", "timeout": PROCESS_GROUP_TIMEOUT, "device_id": torch.device("cuda", 1)}]
    else:
        assert calls == [{"backend": "gloo", "timeout": PROCESS_GROUP_TIMEOUT}]


def test_the_trainer_refuses_data_parallel_runs_it_cannot_split_before_any_work() -> None:
    from mass_ref.lm import LMMassConfig, train_lm_mass

    model = torch.nn.Linear(2, 2)  # never reached: the checks come first
    for config, match in ((LMMassConfig(meta_batch_size=3, per_problem_seeds=True, train_scorer=False),
                           "not divisible by the 2"),
                          (LMMassConfig(meta_batch_size=2, train_scorer=False), "per_problem_seeds=True")):
        with pytest.raises(ValueError, match=match):
            train_lm_mass(model, None, None, None, config, lambda t: [], steps=1, seed=0, parallel=DataParallel(0, 2))


def _config(folder: Path, name: str, cache: Path) -> Path:
    data = json.loads(json.dumps(GPU_SMOKE))
    data["model"]["dtype"] = "float64"
    data["data"] = {"train": "tiny", "test": "tiny"}  # the shipped LM's own task family
    data["mass"].update(precision="fp32", meta_batch_size=4)
    data.update(output_dir=str(folder / name), cache_dir=str(cache), methods=["mass_gold", "mass"])
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _train(config: Path, processes: int, *extra: str) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "mass_ref", "train", "--config", str(config),
               "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow  # torchrun, 2 + 1 processes: ~55 s
def test_two_gloo_processes_with_half_batches_reach_the_parameters_of_one_full_batch(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    single, parallel = _config(tmp_path, "single", cache), _config(tmp_path, "parallel", cache)
    _train(single, 1)
    _train(parallel, 2, "--stop-after", "1")  # interrupted, then resumed: checkpoints are written once, by rank 0
    assert [len(load_checkpoint(p)["history"]) for p in sorted((tmp_path / "parallel").glob("*.pt"))] == [1, 1]
    _train(parallel, 2)
    moved = 0
    for method in ("mass_gold", "mass"):
        a = load_checkpoint(tmp_path / "single" / f"{method}_seed0.pt")
        b = load_checkpoint(tmp_path / "parallel" / f"{method}_seed0.pt")
        assert len(a["history"]) == len(b["history"]) == GPU_SMOKE["steps"]
        for part in ("lora", "scorer"):
            for name, tensor in a[part].items():
                torch.testing.assert_close(b[part][name], tensor, rtol=1e-9, atol=1e-12)
        moved += bool(a["optimizers"]["scorer"]["state"])  # Adam has state: the scorer received gradients
        assert a["history"][0]["valid_fraction"] > 0  # the inner loop and the attributions ran
    assert moved == 2
    rows = [json.loads(line) for line in (tmp_path / "parallel" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["method"], r["step"]) for r in rows] == [(m, s) for m in ("mass_gold", "mass") for s in (1, 2)]
