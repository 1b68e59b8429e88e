"""benchmarks/bench_metagrad.py runs end to end (one fresh child process per row) and rejects bad sizes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mass_ref import project_root

SCRIPT = project_root() / "benchmarks" / "bench_metagrad.py"


@pytest.mark.slow  # child processes: ~30 s on 2 cores
def test_the_benchmark_prints_one_row_per_mode_and_step() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--steps", "1", "--m", "2", "--threads", "1",
                          "--modes", "unroll", "checkpointed"], check=True, capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith(("unroll ", "checkpointed "))]
    assert [r[:2] for r in rows] == [["unroll", "1"], ["checkpointed", "1"]]
    assert all(float(r[3]) > 0 for r in rows)  # seconds


@pytest.mark.slow  # two child processes importing torch: ~20 s
def test_bad_sizes_fail_with_a_message_before_any_work() -> None:
    run = subprocess.run([sys.executable, str(SCRIPT), "--m", "0"], capture_output=True, text=True)
    assert run.returncode == 2 and "--m, every --steps value and --threads must be >= 1" in run.stderr
    run = subprocess.run([sys.executable, str(SCRIPT), "--seq-len", "3"], capture_output=True, text=True)
    assert run.returncode == 2 and "--seq-len >= 8" in run.stderr


def test_support_of_length_cuts_every_example_to_exactly_the_asked_tokens() -> None:
    from mass_ref.lm import PLAIN, TinyLMSpec, pretrained_tiny_lm, task_problems
    from mass_ref.lm.metagrad_cost import support_of_length
    from mass_ref.lm.sft import IGNORE_INDEX

    _, tokenizer, _ = pretrained_tiny_lm(TinyLMSpec(), project_root() / "build" / "cache" / "tiny_lm", progress=False)
    problems = task_problems(TinyLMSpec(), 4, split="train", seed=1)
    for length in (64, 97):  # longer than every prompt (a longer prompt keeps itself plus one answer token)
        batch = support_of_length(tokenizer, PLAIN, problems, 3, length)
        assert batch.input_ids.shape == (3, length) and bool(batch.attention_mask.all())
        assert bool((batch.labels != IGNORE_INDEX).any(-1).all())  # every example keeps supervised tokens
    assert support_of_length(tokenizer, PLAIN, problems, 3, None).input_ids.shape[0] == 3


def test_costs_round_trip_through_their_json_file(tmp_path) -> None:
    import json

    from mass_ref.lm.metagrad_cost import MetaGradientCost, load_costs, save_costs

    costs = [MetaGradientCost("tiny", "unroll", 2, 12, 76, 0.5, 300.0, "cpu")]
    path = save_costs(tmp_path / "c.json", costs, threads=2)
    assert load_costs(path) == costs and json.loads(path.read_text())["machine"]["threads"] == 2
    assert load_costs(tmp_path / "missing.json") == []


@pytest.mark.slow  # child processes: ~35 s
def test_a_json_run_resumes_reusing_the_rows_it_already_measured(tmp_path) -> None:
    import json

    out = tmp_path / "costs.json"
    command = [sys.executable, str(SCRIPT), "--model", "tiny", "--steps", "1", "--m", "2", "--threads", "1",
               "--modes", "first_order", "--json", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    first = json.loads(out.read_text())["rows"]
    again = subprocess.run(command[:5] + ["1", "2"] + command[6:], check=True, capture_output=True, text=True).stdout
    rows = json.loads(out.read_text())["rows"]
    assert rows[0] == first[0] and [r["K"] for r in rows] == [1, 2]
    assert f"from {out}" in again.splitlines()[2]  # the K = 1 row was read back, not measured again


def test_a_point_that_runs_out_of_memory_is_named_and_the_sweep_goes_on(monkeypatch) -> None:
    """On a small card (a 16 GB T4) SmolLM2's unrolled K = 4 runs out of memory: the sweep names it and keeps the rest."""
    import json

    import mass_ref.lm.metagrad_cost as metagrad_cost

    row = {"model": "smollm2", "mode": "checkpointed", "K": 4, "m": 6, "seq_len": 125, "seconds": 2.0, "peak_mb": 900.0,
           "device": "cuda"}
    children = {"unroll": (0, json.dumps({"out_of_memory": "CUDA out of memory. Tried to allocate 2.00 GiB"})),
                "checkpointed": (0, json.dumps(row)), "forward_over_reverse": (-9, ""), "first_order": (1, "")}

    def child(command, **_):  # what `python -m mass_ref.lm.metagrad_cost ...` would print for each mode
        code, out = children[command[4]]
        return subprocess.CompletedProcess(command, code, stdout=out + "\n", stderr="Traceback ... boom")

    monkeypatch.setattr(metagrad_cost.subprocess, "run", child)
    costs, too_large = metagrad_cost.costs_that_fit(
        "smollm2", [("unroll", 4, None), ("checkpointed", 4, None), ("forward_over_reverse", 4, 64)], m=6,
        progress=False)
    assert costs == [metagrad_cost.MetaGradientCost(**row)]
    assert too_large == ["smollm2/unroll/K=4: CUDA out of memory. Tried to allocate 2.00 GiB",
                         "smollm2/forward_over_reverse/K=4/64 tokens: the process was killed (SIGKILL), most likely "
                         "out of memory"]
    with pytest.raises(RuntimeError, match=r"first_order/K=4 failed:\nTraceback ... boom") as failed:
        metagrad_cost.costs_that_fit("smollm2", [("first_order", 4, None)], m=6, progress=False)
    assert not isinstance(failed.value, metagrad_cost.DoesNotFit)  # any other failure stops the sweep
