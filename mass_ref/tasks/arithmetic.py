"""Templated arithmetic word problems with exact answers, skills and a compositional split.

A problem is a start value v₀ followed by 1–3 operations, v_k = v_{k−1} ∘_k b_k, with each
∘_k one of four **skills**: ``add`` (+), ``subtract`` (−, result ≥ 1), ``multiply`` (×) and
``divide`` (÷, exact, divisor < value). Its **difficulty** is the number of operations; numbers
v₀, b_k are drawn from ``number_range`` (default 2–20, where SmolLM2-135M still gets some
one-operation problems right) and every intermediate value stays ≤ ``max_value``.

Text: a few sentence templates per skill (numbers always written as digits, no other digits),
for example::

    question: "Maya has 7 marbles. She buys 5 more marbles. Then the number of marbles becomes
               3 times as large. How many marbles does Maya have now?"
    solution: "7 + 5 = 12\\n12 * 3 = 36\\n#### 36"          (GSM8K style: last line "#### N")
    skills:   ("add", "multiply"),  difficulty: 2,  answer: 36

**Split rule (compositional generalisation).** ``HELD_OUT_PAIRS`` lists skill pairs
({add, divide} and {multiply, subtract}). A problem *uses a held-out combination* when its set of
skills contains both skills of some held-out pair, in any order. Test problems always do (so
they have 2–3 operations); training problems do not, except a fraction ``rare_fraction``
(default 2%, exactly ``floor(rare_fraction · n)`` of n) that does, mimicking a combination that
is rare in pretraining. Every single skill, and every other pair, is common in training.
:func:`split_by_skill_combination` applies the same rule to an existing list (with no leakage).

Sampling uses ``random.Random`` seeded from ``(seed, split)``: the same arguments give the same
problems on every machine, and train and test draw from independent streams.

Introduced in notebooks/04_lm_test_time_training.ipynb.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

__all__ = [
    "HELD_OUT_PAIRS",
    "SKILLS",
    "SPLITS",
    "ArithmeticProblem",
    "apply_skill",
    "arithmetic_dataset",
    "sample_arithmetic_problems",
    "solve_question",
    "split_by_skill_combination",
    "to_records",
    "uses_held_out_combination",
]

SKILLS = ("add", "subtract", "multiply", "divide")
SYMBOLS = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/"}
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (("add", "divide"), ("multiply", "subtract"))
SPLITS = ("train", "test", "all")
DIFFICULTIES = (1, 2, 3)

NAMES = (("Maya", "She"), ("Liam", "He"), ("Ava", "She"), ("Noah", "He"), ("Zoe", "She"), ("Omar", "He"),
         ("Emma", "She"), ("Kenji", "He"), ("Lucia", "She"), ("Tom", "He"), ("Priya", "She"), ("Sam", "He"))
ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "cards", "shells", "books", "coins",
         "beads", "stamps", "flowers")
START_TEMPLATES = ("{name} has {b} {items}.", "{name} starts the day with {b} {items}.",
                   "There are {b} {items} in {name}'s box.")
STEP_TEMPLATES = {
    "add": ("{pron} buys {b} more {items}.", "A friend gives {name} {b} more {items}.",
            "Then {name} finds {b} more {items}."),
    "subtract": ("{pron} gives {b} {items} to a friend.", "Then {name} loses {b} of the {items}.",
                 "{name} uses {b} {items} for a school project."),
    "multiply": ("Then the number of {items} becomes {b} times as large.",
                 "{name} trades each of the {items} for {b} new ones.",
                 "{pron} ends up with {b} times as many {items} as before."),
    "divide": ("{name} splits the {items} into {b} equal groups and keeps one group.",
               "{pron} keeps only one out of every {b} {items}.",
               "{pron} shares the {items} equally among {b} jars and keeps just one jar."),
}
QUESTION_TEMPLATES = ("How many {items} does {name} have now?", "How many {items} does {name} end up with?")


@dataclass(frozen=True)
class ArithmeticProblem:
    """One word problem.

    Attributes:
        question: the problem text.
        solution: worked solution, one ``"a op b = c"`` line per operation, ending ``"#### N"``.
        answer: the exact integer answer N.
        start: v₀.
        steps: ``((skill, operand), ...)``, applied in order.
    """

    question: str
    solution: str
    answer: int
    start: int
    steps: tuple[tuple[str, int], ...]

    @property
    def skills(self) -> tuple[str, ...]:
        """The skills in order of use, e.g. ``("add", "multiply")``."""
        return tuple(skill for skill, _ in self.steps)

    @property
    def difficulty(self) -> int:
        """The number of operations, 1–3."""
        return len(self.steps)


def apply_skill(skill: str, value: int, operand: int) -> int:
    """``value ∘ operand`` for one skill; ``divide`` must be exact.

    >>> apply_skill("divide", 12, 4)
    3
    """
    if skill == "add":
        return value + operand
    if skill == "subtract":
        return value - operand
    if skill == "multiply":
        return value * operand
    if skill == "divide":
        if operand == 0 or value % operand:
            raise ValueError(f"divide needs an exact divisor; {value} / {operand} is not an integer.")
        return value // operand
    raise ValueError(f"skill must be one of {SKILLS}; got {skill!r}.")


def uses_held_out_combination(
    skills: Iterable[str], held_out_pairs: Sequence[tuple[str, str]] = HELD_OUT_PAIRS
) -> bool:
    """Whether ``skills`` contains both skills of some held-out pair (order does not matter)."""
    present = set(skills)
    return any(a in present and b in present for a, b in held_out_pairs)


def split_by_skill_combination(
    problems: Iterable[ArithmeticProblem], held_out_pairs: Sequence[tuple[str, str]] = HELD_OUT_PAIRS
) -> tuple[list[ArithmeticProblem], list[ArithmeticProblem]]:
    """``(train, test)``: test holds exactly the problems that use a held-out skill pair."""
    _check_pairs(held_out_pairs)
    train: list[ArithmeticProblem] = []
    test: list[ArithmeticProblem] = []
    for problem in problems:
        (test if uses_held_out_combination(problem.skills, held_out_pairs) else train).append(problem)
    return train, test


def _check_pairs(held_out_pairs: Sequence[tuple[str, str]]) -> None:
    for pair in held_out_pairs:
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(SKILLS):
            raise ValueError(f"held_out_pairs must hold pairs of two different skills from {SKILLS}; got {pair!r}.")


def _render(rng: random.Random, start: int, steps: Sequence[tuple[str, int]]) -> tuple[str, str, int]:
    name, pron = rng.choice(NAMES)
    items = rng.choice(ITEMS)
    fields = {"name": name, "pron": pron, "items": items}
    sentences = [rng.choice(START_TEMPLATES).format(b=start, **fields)]
    # each skill's templates in a random order, so a repeated skill reads differently each time
    templates = {skill: rng.sample(options, len(options)) for skill, options in STEP_TEMPLATES.items()}
    lines, value = [], start
    for k, (skill, operand) in enumerate(steps):
        template = templates[skill][sum(s == skill for s, _ in steps[:k]) % len(templates[skill])]
        sentences.append(template.format(b=operand, **fields))
        new_value = apply_skill(skill, value, operand)
        lines.append(f"{value} {SYMBOLS[skill]} {operand} = {new_value}")
        value = new_value
    sentences.append(rng.choice(QUESTION_TEMPLATES).format(**fields))
    return " ".join(sentences), "\n".join([*lines, f"#### {value}"]), value


def _sample_operands(
    rng: random.Random, skills: Sequence[str], low: int, high: int, max_value: int
) -> tuple[int, list[tuple[str, int]]] | None:
    """Operands for ``skills`` with every intermediate value in [1, max_value]; None if stuck."""
    start = value = rng.randint(low, high)
    steps = []
    for skill in skills:
        if skill == "subtract":
            choices = list(range(low, min(high, value - 1) + 1))
        elif skill == "divide":
            choices = [d for d in range(max(low, 2), min(high, value - 1) + 1) if value % d == 0]
        elif skill == "multiply":
            choices = [b for b in range(max(low, 2), high + 1) if value * b <= max_value]
        else:
            choices = [b for b in range(low, high + 1) if value + b <= max_value]
        if not choices:
            return None
        operand = rng.choice(choices)
        value = apply_skill(skill, value, operand)
        steps.append((skill, operand))
    return start, steps


def _validate(n: int, seed: int, split: str, difficulties: Sequence[int], number_range: tuple[int, int],
              max_value: int, rare_fraction: float) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative integer; got {n!r}.")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer; got {seed!r}.")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
    if not difficulties or not set(difficulties) <= set(DIFFICULTIES):
        raise ValueError(f"difficulties must be a non-empty subset of {DIFFICULTIES}; got {difficulties!r}.")
    if split == "test" and not set(difficulties) - {1}:
        raise ValueError("difficulties must include 2 or 3 for split='test': test problems combine two skills.")
    low, high = number_range
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low and high >= max(low + 1, 3)):
        raise ValueError(f"number_range must be integers (low, high) with 1 <= low < high and high >= 3; "
                         f"got {number_range!r}.")
    if not isinstance(max_value, int) or max_value < 2 * high:
        raise ValueError(f"max_value must be an integer >= 2 * number_range[1] = {2 * high}; got {max_value!r}.")
    if not 0.0 <= rare_fraction <= 1.0:
        raise ValueError(f"rare_fraction must be in [0, 1]; got {rare_fraction!r}.")


def sample_arithmetic_problems(
    n: int,
    seed: int,
    split: str = "all",
    *,
    difficulties: Sequence[int] = DIFFICULTIES,
    number_range: tuple[int, int] = (2, 20),
    max_value: int = 400,
    rare_fraction: float = 0.02,
    held_out_pairs: Sequence[tuple[str, str]] = HELD_OUT_PAIRS,
) -> list[ArithmeticProblem]:
    """Draw ``n`` problems, deterministically from ``(seed, split)``.

    Each problem: difficulty uniform over the allowed ``difficulties`` (for ``"test"`` only those
    ≥ 2), then a skill sequence uniform over those of that length that the split allows, then
    operands and templates.

    Args:
        n: number of problems.
        seed: any integer; same arguments, same problems.
        split: ``"train"`` (held-out skill pairs only in ``floor(rare_fraction · n)`` problems),
            ``"test"`` (every problem uses a held-out pair) or ``"all"`` (no constraint).
        difficulties: allowed numbers of operations, a subset of ``(1, 2, 3)``.
        number_range: inclusive range ``(low, high)`` of the start value and operands.
        max_value: upper bound on every intermediate value (keeps products small).
        rare_fraction: fraction of training problems allowed to use a held-out pair.
        held_out_pairs: the skill pairs reserved for the test split.

    >>> [p.answer for p in sample_arithmetic_problems(3, seed=0)] == \
[p.answer for p in sample_arithmetic_problems(3, seed=0)]
    True
    """
    _validate(n, seed, split, difficulties, number_range, max_value, rare_fraction)
    _check_pairs(held_out_pairs)
    rng = random.Random(f"mass-ref-arithmetic:{split}:{seed}")
    if split == "train":
        num_rare = math.floor(rare_fraction * n) if max(difficulties) >= 2 else 0
        kinds = ["held_out"] * num_rare + ["seen"] * (n - num_rare)
        rng.shuffle(kinds)
    else:
        kinds = ["held_out" if split == "test" else "any"] * n
    problems = []
    for kind in kinds:
        allowed = sorted(d for d in difficulties if kind != "held_out" or d >= 2)
        while True:
            length = rng.choice(allowed)
            sequences = [
                seq for seq in itertools.product(SKILLS, repeat=length)
                if kind == "any" or uses_held_out_combination(seq, held_out_pairs) == (kind == "held_out")
            ]
            drawn = _sample_operands(rng, rng.choice(sequences), *number_range, max_value)
            if drawn is not None:
                break
        start, steps = drawn
        question, solution, answer = _render(rng, start, steps)
        problems.append(ArithmeticProblem(question, solution, answer, start, tuple(steps)))
    return problems


def to_records(problems: Iterable[ArithmeticProblem]) -> list[dict[str, Any]]:
    """Rows for ``datasets.Dataset.from_list``, in GSM8K's format plus metadata.

    Keys: ``question`` (str), ``answer`` (the worked solution, ending ``"#### N"``),
    ``final_answer`` (``"N"``), ``skills`` (list of str), ``difficulty`` (int).
    """
    return [
        {
            "question": p.question,
            "answer": p.solution,
            "final_answer": str(p.answer),
            "skills": list(p.skills),
            "difficulty": p.difficulty,
        }
        for p in problems
    ]


def arithmetic_dataset(n: int, seed: int, split: str = "all", **kwargs: Any) -> datasets.Dataset:
    """``n`` problems (see :func:`sample_arithmetic_problems`) as a ``datasets.Dataset``."""
    import datasets

    records = to_records(sample_arithmetic_problems(n, seed, split, **kwargs))
    features = datasets.Features({
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "final_answer": datasets.Value("string"),
        "skills": datasets.List(datasets.Value("string")),
        "difficulty": datasets.Value("int64"),
    })
    return datasets.Dataset.from_dict({key: [r[key] for r in records] for key in features}, features=features)


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for field_name, group in (("b", r"(?P<b>\d+)"), ("name", r"[A-Z][a-z]+"), ("pron", r"(?:He|She)"),
                              ("items", r"[a-z]+")):
        pattern = pattern.replace(re.escape("{" + field_name + "}"), group)
    return re.compile(pattern + "$")


_START_RES = [_template_regex(t) for t in START_TEMPLATES]
_STEP_RES = [(skill, _template_regex(t)) for skill, options in STEP_TEMPLATES.items() for t in options]
_QUESTION_RES = [_template_regex(t) for t in QUESTION_TEMPLATES]


def solve_question(question: str) -> tuple[int, tuple[str, ...]] | None:
    """Recover ``(answer, skills)`` from a question written with this module's templates, or None.

    Reads the sentences back: a start sentence with v₀, one step sentence per operation, a final
    question. Returns None when any sentence matches no template or an operation is invalid
    (a difference below 1, an inexact division). This is how a *generated* practice problem gets
    its true answer, so a generator's self-written solution can be checked.

    >>> p = sample_arithmetic_problems(1, seed=3)[0]
    >>> solve_question(p.question) == (p.answer, p.skills)
    True
    >>> solve_question("Maya has many apples.") is None
    True
    """
    sentences = re.findall(r"[^.?]*[.?]", question.strip())
    if len(sentences) < 3 or "".join(sentences).strip() != question.strip():
        return None
    sentences = [s.strip() for s in sentences]
    start = next((m for r in _START_RES if (m := r.match(sentences[0]))), None)
    if start is None or not any(r.match(sentences[-1]) for r in _QUESTION_RES):
        return None
    value, skills = int(start["b"]), []
    for sentence in sentences[1:-1]:
        found = next(((skill, m) for skill, r in _STEP_RES if (m := r.match(sentence))), None)
        if found is None:
            return None
        skill, operand = found[0], int(found[1]["b"])
        if (skill == "subtract" and value - operand < 1) or (skill == "divide" and (operand < 1 or value % operand)):
            return None
        value = apply_skill(skill, value, operand)
        skills.append(skill)
    return value, tuple(skills)
