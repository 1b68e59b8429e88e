"""Text formats shared by the tiny LM's pretraining corpus, the solver and the generator.

Three kinds of text, for a problem with question q and worked solution s ("a op b = c" lines,
then "#### N"):

* **solve**: prompt ``"Question: q\\nAnswer:"``, completion ``" s"`` (then eos). The solver's
  prompt and the SFT examples of the inner loop.
* **practice**: prompt ``"Problem: T\\nSimilar problem:\\nQuestion:"`` where T is a target
  question; the completion ``" q'\\nAnswer: s'"`` is a *related* problem (same skills, new
  names and numbers) with its solution. This is the generator's prompt: the same LM, asked to
  write practice data for T. :func:`parse_practice` turns a completion back into a solve pair.
* the pretraining corpus (:func:`pretraining_corpus`) mixes solve texts of the training
  problems with practice texts that pair training problems of the same skill set, so the tiny
  LM learns both to solve and to write related problems. Test problems use skill combinations
  that are (almost) absent from that corpus (see :mod:`mass_ref.tasks.arithmetic`).

For SmolLM2 the same prompts are wrapped in its chat template by the caller; the formats here
are plain text so that a 1M-parameter model can learn them.

Introduced in notebooks/04_lm_test_time_training.ipynb.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from mass_ref.tasks.arithmetic import ArithmeticProblem

__all__ = [
    "PLAIN",
    "PromptFormat",
    "chat_format",
    "practice_prompt",
    "parse_practice",
    "practice_text",
    "pretraining_corpus",
    "solve_pair",
    "solve_prompt",
]

ANSWER_MARK = "\nAnswer:"


def solve_prompt(question: str) -> str:
    """The solver's prompt for ``question``: ``"Question: <q>\\nAnswer:"``."""
    return f"Question: {question}{ANSWER_MARK}"


def solve_pair(question: str, solution: str) -> tuple[str, str]:
    """A supervised (prompt, completion) pair: ``(solve_prompt(q), " " + solution)``."""
    return solve_prompt(question), f" {solution}"


def practice_prompt(target_question: str) -> str:
    """The generator's prompt: asks for one problem similar to ``target_question``, with its solution."""
    return f"Problem: {target_question}\nSimilar problem:\nQuestion:"


def practice_text(target: ArithmeticProblem, related: ArithmeticProblem) -> str:
    """A full practice document: the practice prompt for ``target`` and ``related`` written out."""
    return f"{practice_prompt(target.question)} {related.question}{ANSWER_MARK} {related.solution}"


def parse_practice(completion: str) -> tuple[str, str] | None:
    """Split a generated practice completion ``" q'\\nAnswer: s'"`` into ``(question, solution)``, or None.

    None when the completion has no ``"\\nAnswer:"`` or an empty question or solution; the
    solution is kept as written (it may be wrong: that is what the scorer is for).

    >>> parse_practice(" Ava has 3 cards. How many cards does Ava have now?\\nAnswer: #### 3")
    ('Ava has 3 cards. How many cards does Ava have now?', '#### 3')
    >>> parse_practice(" no answer here") is None
    True
    """
    question, mark, solution = completion.partition(ANSWER_MARK)
    question, solution = question.strip(), solution.strip()
    if not mark or not question or not solution:
        return None
    return question, solution


def pretraining_corpus(
    problems: Sequence[ArithmeticProblem], *, practice_fraction: float = 0.5, seed: int = 0
) -> list[str]:
    """Solve texts for every problem plus practice texts pairing problems with the same skill set.

    Each problem appears once as ``solve_prompt(q) + " " + s``; in addition a fraction
    ``practice_fraction`` of the problems gets a practice document whose related problem is
    drawn (seeded) from the other problems with the same set of skills. The order is shuffled.
    """
    if not 0.0 <= practice_fraction <= 1.0:
        raise ValueError(f"practice_fraction must be in [0, 1]; got {practice_fraction!r}.")
    rng = random.Random(f"mass-ref-corpus:{seed}")
    by_skills: dict[frozenset[str], list[ArithmeticProblem]] = defaultdict(list)
    for p in problems:
        by_skills[frozenset(p.skills)].append(p)
    texts = ["".join(solve_pair(p.question, p.solution)) for p in problems]
    for p in problems:
        group = by_skills[frozenset(p.skills)]
        if len(group) > 1 and rng.random() < practice_fraction:
            related = rng.choice([q for q in group if q is not p])
            texts.append(practice_text(p, related))
    rng.shuffle(texts)
    return texts


@dataclass(frozen=True)
class PromptFormat:
    """How one model is asked to solve and to write practice problems.

    Attributes:
        solve: question → the solver's prompt (the completion is ``" " + solution``).
        practice: target question → the generator's prompt (the completion is ``" q'\\nAnswer: s'"``).
        add_bos: prepend the tokenizer's bos token to every prompt (the tiny LM was pretrained so).
    """

    solve: Callable[[str], str]
    practice: Callable[[str], str]
    add_bos: bool = False

    def solve_pair(self, question: str, solution: str) -> tuple[str, str]:
        """The supervised (prompt, completion) pair of a solved problem."""
        return self.solve(question), f" {solution}"

    def parse(self, completion: str) -> tuple[str, str] | None:
        """A generated practice completion as a solve pair in this format, or None (see :func:`parse_practice`)."""
        pair = parse_practice(completion)
        return None if pair is None else self.solve_pair(*pair)


PLAIN = PromptFormat(solve=solve_prompt, practice=practice_prompt, add_bos=True)
"""The tiny LM's plain-text format (what :func:`pretraining_corpus` writes)."""

CHAT_SOLVE = ("Solve the problem. Write one line per calculation, like 3 + 4 = 7, and end with a last line "
              "#### followed by the answer.\n\n{question}")
CHAT_PRACTICE = ("Write one new practice problem similar to the problem below (same kind of steps, new names and "
                 "numbers) and its solution. Use exactly this layout:\nQuestion: <problem>\nAnswer: <one line per "
                 "calculation>\n#### <answer>\n\nProblem: {question}")


def chat_format(tokenizer: PreTrainedTokenizerBase, *, system: str = "You are a helpful assistant.") -> PromptFormat:
    """Prompts wrapped in an instruct model's chat template (e.g. SmolLM2-135M-Instruct).

    The system message is explicit because SmolLM2's template otherwise inserts a default one. The
    generator's assistant turn is pre-filled with ``"Question:"`` so its completion has the same
    shape as the plain format's and :func:`parse_practice` reads both.
    """

    def wrap(user: str, prefill: str = "") -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + prefill

    return PromptFormat(solve=lambda q: wrap(CHAT_SOLVE.format(question=q)),
                        practice=lambda q: wrap(CHAT_PRACTICE.format(question=q), "Question:"), add_bos=False)
