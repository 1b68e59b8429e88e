"""Test-time evaluation of the LM methods under one budget: m examples, a few SGD steps, greedy answer.

Every method answers a held-out problem T the same way (:func:`test_time_accuracy`): adapt the
LoRA tensors with ``steps`` plain SGD steps of step size α on Σ_i w_i ℓ_SFT(p_i, a_i), answer
greedily, restore the adapter. The methods differ only in where (p_i, a_i) and w_i come from:

=============  ==============================================================================
Base           no examples (no update)
Base TTT       m random *training* problems with gold solutions (:func:`random_practice`)
(oracle)       m problems of the target's skill set with gold solutions (:func:`related_practice`)
TT-SS          m problems the base model writes for T itself, w_i = 1/m (:func:`practice_sets`)
Solver GRPO    no examples; the LoRA tensors were RL-trained on solving
MASS(_gold)    m problems the meta-trained model writes, w_i = s_η (the meta-trained scorer)
=============  ==============================================================================

Introduced in notebooks/05_mass_llm.ipynb.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mass_ref.attribution import roc_auc
from mass_ref.lm.formats import PromptFormat, parse_practice
from mass_ref.lm.generate import sample_answers
from mass_ref.lm.mass import synthetic_is_right
from mass_ref.lm.scorer import LMScorer, pooled_features
from mass_ref.lm.sft import sft_batch, sft_losses_per_example
from mass_ref.lm.ttt import adapted_lora, ttt_accuracy
from mass_ref.tasks.arithmetic import ArithmeticProblem

__all__ = ["PracticeSet", "practice_sets", "random_practice", "related_practice", "scorer_auc", "test_time_accuracy",
           "test_time_gold_loss"]

Example = tuple[str, str]


@dataclass(frozen=True)
class PracticeSet:
    """The practice data a model wrote for one target problem.

    Attributes:
        completions: the m raw generated completions.
        examples: the parseable ones as (prompt, answer) pairs in the model's format.
        weights: the scorer's s_i per example, or None (uniform 1/m).
        right: per example, whether its answer is the true answer of its question (None: the
            question does not follow the task's templates, so the truth is unknown).
    """

    completions: list[str]
    examples: list[Example]
    weights: list[float] | None
    right: list[bool | None]


def practice_sets(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    problems: Sequence[ArithmeticProblem],
    *,
    m: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    scorer: LMScorer | None = None,
    batch_size: int = 32,
) -> list[PracticeSet]:
    """m self-generated practice problems per target (sampled from ``fmt.practice``), scored by ``scorer``."""
    completions = sample_answers(model, tokenizer, [fmt.practice(p.question) for p in problems], num_samples=m,
                                 temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                                 batch_size=batch_size, add_bos=fmt.add_bos)
    sets = []
    for problem, group in zip(problems, completions):
        raw = [pair for pair in map(parse_practice, group) if pair is not None]
        examples = [fmt.solve_pair(*pair) for pair in raw]
        weights = None
        if scorer is not None and examples:
            device = next(scorer.parameters()).device
            with torch.no_grad():
                weights = scorer(pooled_features(model, tokenizer, problem.question, examples).to(device)).tolist()
        sets.append(PracticeSet(list(group), examples, weights, [synthetic_is_right(*pair) for pair in raw]))
    return sets


def random_practice(
    pool: Sequence[ArithmeticProblem], fmt: PromptFormat, n_targets: int, *, m: int, seed: int
) -> list[list[Example]]:
    """Base TTT's data: for each of ``n_targets`` targets, m training problems drawn at random from ``pool``."""
    if len(pool) < m:
        raise ValueError(f"the pool has {len(pool)} problems, fewer than m={m}; pass a larger pool.")
    rng = random.Random(f"mass-ref-random-practice:{seed}")
    return [[fmt.solve_pair(p.question, p.solution) for p in rng.sample(list(pool), m)] for _ in range(n_targets)]


def related_practice(
    pool: Sequence[ArithmeticProblem], fmt: PromptFormat, problems: Sequence[ArithmeticProblem], *, m: int, seed: int
) -> list[list[Example]]:
    """The oracle's data: for each target, m problems from ``pool`` with the *same set of skills*, gold solutions.

    What a perfect generator would write; an upper reference for self-synthesis, not a method
    (it needs labelled problems of the target's kind). Draw ``pool`` from the test split with
    another seed, so it holds the held-out skill combinations.
    """
    by_skills: dict[frozenset[str], list[ArithmeticProblem]] = {}
    for p in pool:
        by_skills.setdefault(frozenset(p.skills), []).append(p)
    rng = random.Random(f"mass-ref-related-practice:{seed}")
    sets = []
    for problem in problems:
        group = [p for p in by_skills.get(frozenset(problem.skills), []) if p.question != problem.question]
        if len(group) < m:
            raise ValueError(f"the pool has {len(group)} problems with skills {sorted(set(problem.skills))}, fewer "
                             f"than m={m}; pass a larger pool.")
        sets.append([fmt.solve_pair(p.question, p.solution) for p in rng.sample(group, m)])
    return sets


def test_time_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    problems: Sequence[ArithmeticProblem],
    examples: Sequence[Sequence[Example]] | None,
    *,
    steps: int,
    inner_lr: float,
    max_new_tokens: int,
    weights: Sequence[Sequence[float] | None] | None = None,
    progress: bool = False,
) -> list[bool]:
    """Per-problem correctness after test-time SGD on ``examples[i]`` (weights ``weights[i]``) for problem i.

    ``examples=None`` answers without any update (Base, Solver GRPO). The adapter is restored
    after every problem, bit for bit.
    """
    if examples is not None and len(examples) != len(problems):
        raise ValueError(f"need one example list per problem; got {len(examples)} for {len(problems)} problems.")
    if weights is not None and len(weights) != len(problems):
        raise ValueError(f"need one weight list (or None) per problem; got {len(weights)} for {len(problems)}.")
    _, correct = ttt_accuracy(
        model, tokenizer, list(range(len(problems))),
        (lambda i: []) if examples is None else (lambda i: examples[i]),
        steps=steps, lr=inner_lr, optimizer="sgd", prompt_fn=lambda i: fmt.solve(problems[i].question),
        max_new_tokens=max_new_tokens, gold_fn=lambda i: problems[i].answer, add_bos=fmt.add_bos,
        weights_for=None if weights is None else (lambda i, ex: weights[i]), progress=progress)
    return correct


def test_time_gold_loss(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    problems: Sequence[ArithmeticProblem],
    examples: Sequence[Sequence[Example]] | None,
    *,
    steps: int,
    inner_lr: float,
    weights: Sequence[Sequence[float] | None] | None = None,
) -> list[float]:
    """Per-problem ℓ_SFT(φ'; T, R*), the gold solution's mean token cross-entropy after the test-time update.

    The continuous twin of :func:`test_time_accuracy` (same update, then no decoding): MASS_gold's
    outer loss, and a far less noisy measure than accuracy of whether the examples helped.
    """
    losses = []
    for i, problem in enumerate(problems):
        ex = [] if examples is None else list(examples[i])
        w = None if weights is None or not ex else weights[i]
        gold = sft_batch(tokenizer, [fmt.solve_pair(problem.question, problem.solution)], add_bos=fmt.add_bos)
        with adapted_lora(model, tokenizer, ex, steps=steps, lr=inner_lr, optimizer="sgd", weights=w,
                          add_bos=fmt.add_bos), torch.no_grad():
            losses.append(sft_losses_per_example(model, gold.to(next(model.parameters()).device)).item())
    return losses


def scorer_auc(sets: Sequence[PracticeSet]) -> float:
    """AUC of the scorer's weights for right vs wrong self-generated examples (NaN if a class is empty).

    1.0: every right example outweighs every wrong one; 0.5: the scorer cannot tell them apart.
    Examples whose truth is unknown are left out.
    """
    scores, labels = [], []
    for s in sets:
        if s.weights is None:
            continue
        for w, right in zip(s.weights, s.right):
            if right is not None:
                scores.append(w)
                labels.append(float(right))
    if not scores or min(labels) == max(labels):
        return float("nan")
    return roc_auc(torch.tensor(scores), torch.tensor(labels))
