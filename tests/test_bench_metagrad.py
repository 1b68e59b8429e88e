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
