"""Problem sources: the tiny task family, and GSM8K / MATH-500 records from the offline fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from mass_ref.lm import LMDataSpec, ProblemSource, TextProblem, TinyLMSpec, task_problems, text_problems
from mass_ref.tasks.benchmarks import load_gsm8k
from mass_ref.tasks.verify import is_correct

FIXTURES = Path(__file__).resolve().parent.parent / "mass_ref" / "tasks" / "samples"
GSM8K = LMDataSpec(train="gsm8k", test="gsm8k", train_path=str(FIXTURES / "gsm8k_train_sample.jsonl"),
                   test_path=str(FIXTURES / "gsm8k_test_sample.jsonl"))


def test_gsm8k_solutions_lose_calculator_annotations_and_keep_their_checkable_answer() -> None:
    (problem,) = text_problems(load_gsm8k("test", path=FIXTURES / "gsm8k_test_sample.jsonl", limit=1))
    assert problem == TextProblem(problem.question, problem.solution, "54")
    assert "<<" not in problem.solution and problem.solution.endswith("#### 54")
    assert is_correct(problem.solution, problem.answer)  # the verifier reads the gold solution as right


def test_benchmark_source_draws_distinct_training_problems_by_seed_and_a_fixed_test_prefix() -> None:
    source = ProblemSource(GSM8K)
    draw = source.train(4, seed=3)
    assert len({p.question for p in draw}) == 4 and draw == source.train(4, seed=3) != source.train(4, seed=4)
    assert len(source.train(100, seed=0)) == 12  # at most all of them
    assert source.test(3, seed=0) == source.test(3, seed=9) == source.test(5, seed=0)[:3]
    with pytest.raises(ValueError, match="6 test problems asked for, but gsm8k has 5"):
        source.test(6, seed=0)
    math = ProblemSource(LMDataSpec(test="math500", test_path=str(FIXTURES / "math500_test_sample.jsonl")))
    assert all(isinstance(p, TextProblem) and p.answer for p in math.test(5, seed=0))


def test_tiny_source_is_the_task_family_and_bad_specs_are_named() -> None:
    spec = TinyLMSpec()
    source = ProblemSource(tiny=spec)
    assert source.train(3, seed=1) == task_problems(spec, 3, split="train", seed=1)
    assert source.test(3, seed=1) == task_problems(spec, 3, split="test", seed=1)
    for bad, match in ((dict(train="math500"), "train must be one of"), (dict(test="aime"), "test must be one of"),
                       (dict(train_path="x.jsonl"), "train_path is for a benchmark")):
        with pytest.raises(ValueError, match=match):
            LMDataSpec(**bad)
