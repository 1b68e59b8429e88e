"""Templated arithmetic word problems: determinism, exact answers, the compositional split."""

from __future__ import annotations

import operator
import re
from collections import Counter

import pytest

from mass_ref.tasks.arithmetic import (
    HELD_OUT_PAIRS,
    SKILLS,
    ArithmeticProblem,
    apply_skill,
    arithmetic_dataset,
    sample_arithmetic_problems,
    split_by_skill_combination,
    to_records,
    uses_held_out_combination,
)
from mass_ref.tasks.verify import extract_answer, is_correct

# An independent reference for the arithmetic (not the module's apply_skill).
REFERENCE_OPS = {"add": operator.add, "subtract": operator.sub, "multiply": operator.mul, "divide": operator.truediv}


@pytest.fixture(scope="module")
def problems() -> dict[str, list[ArithmeticProblem]]:
    return {split: sample_arithmetic_problems(400, seed=3, split=split) for split in ("train", "test", "all")}


def test_same_seed_same_problems_other_seed_other_problems() -> None:
    a = sample_arithmetic_problems(50, seed=7, split="train")
    assert a == sample_arithmetic_problems(50, seed=7, split="train")
    assert a != sample_arithmetic_problems(50, seed=8, split="train")
    assert [p.question for p in a] != [p.question for p in sample_arithmetic_problems(50, seed=7, split="all")]


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_answers_recomputed_from_the_stored_operands(problems, split: str) -> None:
    for p in problems[split]:
        value: float = p.start
        for skill, operand in p.steps:
            value = REFERENCE_OPS[skill](value, operand)
            assert value == int(value) and 1 <= value <= 400  # exact division, positive, bounded
        assert p.answer == value
        assert 1 <= p.difficulty == len(p.skills) <= 3
        assert all(2 <= n <= 20 for n in (p.start, *(b for _, b in p.steps)))


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_question_states_exactly_the_operands_and_solution_shows_each_step(problems, split: str) -> None:
    for p in problems[split]:
        assert [int(n) for n in re.findall(r"\d+", p.question)] == [p.start, *(b for _, b in p.steps)]
        assert p.question.endswith("?")
        templates = [re.sub(r"\d+", "N", sentence) for sentence in p.question.split(". ")]
        assert len(set(templates)) == len(templates)  # a repeated skill is worded differently
        *lines, last = p.solution.split("\n")
        assert last == f"#### {p.answer}" and len(lines) == p.difficulty
        value = p.start
        for line, (skill, operand) in zip(lines, p.steps):
            value = apply_skill(skill, value, operand)
            assert re.fullmatch(r"\d+ [-+*/] \d+ = \d+", line) and line.endswith(f"= {value}")


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_every_solution_passes_the_verifier(problems, split: str) -> None:
    for p in problems[split]:
        assert extract_answer(p.solution) == str(p.answer)
        assert is_correct(p.solution, str(p.answer)) and is_correct(f"#### {p.answer}", p.solution)
        assert not is_correct(f"#### {p.answer + 1}", p.solution)


def test_split_test_combinations_are_rare_in_train(problems) -> None:
    train, test = problems["train"], problems["test"]
    assert all(uses_held_out_combination(p.skills) for p in test)
    assert all(p.difficulty >= 2 for p in test)
    rare = sum(uses_held_out_combination(p.skills) for p in train)
    assert rare == int(0.02 * len(train))  # exactly floor(rare_fraction * n), default 2%
    # each held-out pair really occurs in test, and each of its skills alone is common in train
    for a, b in HELD_OUT_PAIRS:
        assert any({a, b} <= set(p.skills) for p in test)
    single = Counter(s for p in train if not uses_held_out_combination(p.skills) for s in set(p.skills))
    assert all(single[s] >= 0.1 * len(train) for s in SKILLS)
    assert Counter(p.difficulty for p in train).keys() == {1, 2, 3}


@pytest.mark.parametrize(("n", "rare_fraction", "expected"), [(130, 0.02, 2), (99, 0.1, 9), (10, 0.5, 5)])
def test_rare_count_is_the_floor_of_the_fraction(n: int, rare_fraction: float, expected: int) -> None:
    train = sample_arithmetic_problems(n, seed=4, split="train", rare_fraction=rare_fraction)
    assert sum(uses_held_out_combination(p.skills) for p in train) == expected


def test_no_leakage_when_rare_fraction_is_zero() -> None:
    train = sample_arithmetic_problems(200, seed=0, split="train", rare_fraction=0.0)
    assert not any(uses_held_out_combination(p.skills) for p in train)


def test_split_function_partitions_by_skill_combination(problems) -> None:
    mixed = problems["all"]
    train, test = split_by_skill_combination(mixed)
    assert len(train) + len(test) == len(mixed) and train and test
    assert not any(uses_held_out_combination(p.skills) for p in train)
    assert all(uses_held_out_combination(p.skills) for p in test)
    custom_train, _ = split_by_skill_combination(mixed, held_out_pairs=[("add", "subtract")])
    assert not any({"add", "subtract"} <= set(p.skills) for p in custom_train)


def test_uses_held_out_combination_ignores_order() -> None:
    assert uses_held_out_combination(("divide", "multiply", "add"))
    assert uses_held_out_combination(("subtract", "multiply"))
    assert not uses_held_out_combination(("add", "add", "multiply"))
    assert not uses_held_out_combination(("divide",))


def test_options_are_respected() -> None:
    small = sample_arithmetic_problems(100, seed=1, difficulties=(2,), number_range=(2, 9), max_value=50)
    assert all(p.difficulty == 2 and p.answer <= 50 for p in small)
    assert all(all(2 <= b <= 9 for _, b in p.steps) for p in small)
    assert sample_arithmetic_problems(0, seed=1) == []


def test_records_and_dataset_have_the_gsm8k_columns() -> None:
    sample = sample_arithmetic_problems(5, seed=2, split="test")
    records = to_records(sample)
    assert records[0].keys() == {"question", "answer", "final_answer", "skills", "difficulty"}
    assert [r["final_answer"] for r in records] == [str(p.answer) for p in sample]
    dataset = arithmetic_dataset(5, seed=2, split="test")
    assert len(dataset) == 5 and dataset.to_list() == records


def test_apply_skill_rejects_inexact_division_and_unknown_skills() -> None:
    assert apply_skill("divide", 12, 4) == 3
    with pytest.raises(ValueError, match="divide"):
        apply_skill("divide", 7, 2)
    with pytest.raises(ValueError, match="skill"):
        apply_skill("power", 2, 3)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": -1}, "n"),
        ({"n": 2.5}, "n"),
        ({"seed": "x"}, "seed"),
        ({"split": "validation"}, "split"),
        ({"difficulties": (4,)}, "difficulties"),
        ({"difficulties": (1,), "split": "test"}, "difficulties"),
        ({"number_range": (5, 3)}, "number_range"),
        ({"max_value": 10}, "max_value"),
        ({"rare_fraction": 1.5}, "rare_fraction"),
        ({"held_out_pairs": [("add", "add")]}, "held_out_pairs"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    args = {"n": 3, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=name):
        sample_arithmetic_problems(**args)
