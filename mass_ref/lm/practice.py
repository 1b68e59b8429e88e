"""What the generator is asked to write for a target problem T: two kinds of practice data.

=============  ==========================================  ======================================
kind           the generator's prompt and completion        the practice example (p_i, a_i)
=============  ==========================================  ======================================
``related``    ``fmt.practice(T)`` → a new problem q' with  ``(solve(q'), s')``: a problem of the
(the paper's)  its solution s' (same skills, new numbers)   same kind, written and solved by the LM
``self``       ``fmt.solve(T)`` → an attempt s at T         ``(solve(T), s)``: the target itself
               (sampled, temperature τ)                     with one of the LM's own solutions
=============  ==========================================  ======================================

Why two. The paper's generator writes *related* problems. On the tiny LM of chapter 5 that data
has no room: few of the self-written problems are right and on the target's skills, the right ones
are already known to the model, and even gold related problems (a perfect generator) move the
answer little. Practice that bears on the target's own answer does have room: training on the
right ones of m sampled attempts at T raises accuracy by about +10 points over training on all
of them (chapter 5 measures this ceiling). Picking the right attempts without the answer is then
the scorer's job, and writing attempts worth picking is the generator's.

Whether an example is *right* is known for both kinds on the arithmetic task family (a related
problem is read back with its templates, :func:`~mass_ref.tasks.arithmetic.solve_question`; a self
attempt is compared with T's answer). It is used for diagnostics and for the oracle ceiling only,
never by a method.

Introduced in notebooks/05_mass_llm.ipynb.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from mass_ref.lm.formats import PromptFormat, parse_practice
from mass_ref.tasks.arithmetic import solve_question
from mass_ref.tasks.verify import extract_answer, is_correct

__all__ = ["PRACTICE_KINDS", "answer_agreement", "check_practice_kind", "equations_hold", "parse_practice_completion",
           "practice_is_right", "practice_prompt_for", "scorer_context"]

PRACTICE_KINDS = ("related", "self")


def check_practice_kind(kind: str) -> None:
    """Raise a ValueError naming the allowed kinds unless ``kind`` is one of :data:`PRACTICE_KINDS`."""
    if kind not in PRACTICE_KINDS:
        raise ValueError(f"practice must be one of {PRACTICE_KINDS}; got {kind!r} ('self': attempts at the target "
                         "itself, 'related': new problems like it).")


def practice_prompt_for(fmt: PromptFormat, kind: str, question: str) -> str:
    """The generator's prompt for target ``question``: ``fmt.practice`` (related) or ``fmt.solve`` (self)."""
    check_practice_kind(kind)
    return fmt.practice(question) if kind == "related" else fmt.solve(question)


def scorer_context(kind: str, question: str) -> str:
    """What the scorer reads before each example: the target for related practice, nothing for self
    practice (its prompt is the target already)."""
    check_practice_kind(kind)
    return f"Problem: {question}\n" if kind == "related" else ""


def parse_practice_completion(kind: str, question: str, completion: str) -> tuple[str, str] | None:
    """A generated completion as a practice ``(question, solution)``, or None when it is unusable.

    related: :func:`~mass_ref.lm.formats.parse_practice`; self: ``(question, completion)`` when the
    completion has any text (its answer may be wrong: that is for the scorer to judge).

    >>> parse_practice_completion("self", "Q?", " 3 + 4 = 7\\n#### 7")
    ('Q?', '3 + 4 = 7\\n#### 7')
    >>> parse_practice_completion("self", "Q?", "   ") is None
    True
    """
    check_practice_kind(kind)
    if kind == "related":
        return parse_practice(completion)
    solution = completion.strip()
    return (question, solution) if solution else None


def practice_is_right(kind: str, target: Any, question: str, solution: str) -> bool | None:
    """Whether a practice solution's final answer is its question's true answer (None: unknown).

    self: compared with ``target.answer``; related: the question is read back with the arithmetic
    templates (None when it does not follow them, e.g. for benchmark problems).
    """
    check_practice_kind(kind)
    if kind == "self":
        predicted = extract_answer(solution)
        return predicted is not None and is_correct(predicted, target.answer)
    solved = solve_question(question)
    if solved is None:
        return None
    predicted = extract_answer(solution)
    return predicted is not None and is_correct(predicted, solved[0])


def answer_agreement(solutions: Sequence[str]) -> list[float]:
    """For each solution, the share of all ``solutions`` with the same final answer (0 without one).

    The label-free "vote" of self-consistency: an answer that many samples reach scores high.

    >>> answer_agreement(["#### 4", "2 + 2 = 4\\n#### 4", "#### 5", "no answer"])
    [0.5, 0.5, 0.25, 0.0]
    """
    answers = [extract_answer(s) for s in solutions]
    counts = Counter(a for a in answers if a is not None)
    n = max(1, len(solutions))
    return [counts[a] / n if a is not None else 0.0 for a in answers]


_EQUATION = re.compile(r"([0-9.+\-*/×÷() ]*[0-9)])\s*=\s*(-?\d+(?:\.\d+)?)")
_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.Div: lambda a, b: a / b}


def _arithmetic(node: ast.AST) -> Fraction:
    """The exact value of a +, −, ×, ÷ expression of numbers; ValueError for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_arithmetic(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    raise ValueError("not an arithmetic expression")


def equations_hold(solution: str) -> float:
    """The share of ``solution``'s worked equations whose arithmetic is right (0 when it has none).

    A label-free check of the *steps*: it needs no gold answer, only exact arithmetic. An equation is
    an expression of numbers with +, −, *, /, ×, ÷ and brackets, ``=``, and a number (``12 * 3 = 36``;
    GSM8K's calculator annotations ``<<48+24=72>>`` are read the same way). A wrong step (``4 * 2 = 15``)
    makes a solution suspect whatever its final answer; the check cannot see a right calculation on the
    wrong numbers (a misread problem), which is why it is one feature of the scorer, not a verifier.

    >>> equations_hold("4 * 2 = 8\\n8 - 3 = 5\\n#### 5")
    1.0
    >>> equations_hold("4 * 2 = 15\\n15 / 3 = 5\\n#### 5"), equations_hold("(2 + 3) × 4 = 20"), equations_hold("#### 5")
    (0.5, 1.0, 0.0)
    """
    held = []
    for left, right in _EQUATION.findall(solution):
        try:
            tree = ast.parse(left.strip().replace("×", "*").replace("÷", "/"), mode="eval").body
            if not isinstance(tree, ast.BinOp):  # "= 5" after a lone number is a statement, not a step
                continue
            held.append(_arithmetic(tree) == Fraction(right))
        except ZeroDivisionError:
            held.append(False)
        except (SyntaxError, ValueError):
            continue
    return sum(held) / len(held) if held else 0.0
