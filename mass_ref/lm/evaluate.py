"""Test-time evaluation of the LM methods under one budget: m examples, a few SGD steps, greedy answer.

Every method answers a held-out problem T the same way (:func:`ttt_results`): adapt the
LoRA tensors with ``steps`` plain SGD steps of step size α on Σ_i w_i ℓ_SFT(p_i, a_i), answer
greedily and score the gold solution's loss under the adapted φ', then drop φ' (many problems at once, each
batch row with its own φ': :mod:`mass_ref.lm.per_problem_lora`). The methods differ only in where
(p_i, a_i) and w_i come from:

=================  ==========================================================================
Base               no examples (no update)
Base TTT           m random *training* problems with gold solutions (:func:`random_practice`)
TT-SS              m practice examples the model writes for T (:func:`practice_sets`), w_i = 1/m
oracle right-only  the same examples, weight only on the right ones (:func:`right_only`): a ceiling
related gold       m problems of T's skill set with gold solutions (:func:`related_practice`): a
                   perfect related-problem generator, another ceiling
Solver GRPO        no examples; the LoRA tensors were RL-trained on solving
MASS(_gold)        m examples the meta-trained model writes, w_i = s_η (the meta-trained scorer)
=================  ==========================================================================

Introduced in notebooks/05_mass_llm.ipynb.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mass_ref.stats import roc_auc
from mass_ref.lm.amp import fp32_scope
from mass_ref.lm.formats import PromptFormat
from mass_ref.lm.generate import eval_mode, generate_answers, sample_answers
from mass_ref.lm.practice import (answer_agreement, equations_hold, parse_practice_completion, practice_is_right,
                                  practice_prompt_for, scorer_context)
from mass_ref.lm.scorer import LMScorer, scorer_features
from mass_ref.lm.per_problem_lora import per_problem_lora, sgd_per_problem
from mass_ref.lm.sft import SFTBatch, sft_batch, sft_losses_per_example
from mass_ref.tasks.arithmetic import ArithmeticProblem
from mass_ref.tasks.verify import is_correct
from mass_ref.progress import progress_bar

__all__ = ["PracticeSet", "checked_only", "practice_sets", "random_practice", "related_practice", "right_only",
           "scorer_auc", "selection_rates", "ttt_results"]

Example = tuple[str, str]


@dataclass(frozen=True)
class PracticeSet:
    """The practice data a model wrote for one target problem.

    Attributes:
        completions: the m raw generated completions.
        examples: the parseable ones as (prompt, answer) pairs in the model's format.
        weights: the scorer's s_i per example (they sum to its step scale c), or None (uniform 1/m).
        right: per example, whether its answer is the true answer of its question (None: the
            question does not follow the task's templates, so the truth is unknown).
        scores: the scorer's logits z_i/τ (comparable across problems, for AUCs), or None.
    """

    completions: list[str]
    examples: list[Example]
    weights: list[float] | None
    right: list[bool | None]
    scores: list[float] | None = None


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
    kind: str = "related",
    batch_size: int = 32,
) -> list[PracticeSet]:
    """m self-written practice examples per target of ``kind`` (:mod:`mass_ref.lm.practice`), scored by ``scorer``."""
    prompts = [practice_prompt_for(fmt, kind, p.question) for p in problems]
    completions = sample_answers(model, tokenizer, prompts, num_samples=m, temperature=temperature,
                                 max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, add_bos=fmt.add_bos)
    sets = []
    for problem, group in zip(problems, completions):
        raw = [pair for c in group if (pair := parse_practice_completion(kind, problem.question, c)) is not None]
        examples = [fmt.solve_pair(*pair) for pair in raw]
        weights = scores = None
        if scorer is not None and examples:
            device = next(scorer.parameters()).device
            features = scorer_features(model, tokenizer, examples, add_bos=fmt.add_bos,
                                       context=scorer_context(kind, problem.question)).to(device)
            with torch.no_grad(), fp32_scope(device):  # the scorer computes in its own dtype, even under autocast
                logits = scorer.logits(features)
                weights = (scorer.log_step_scale.exp() * torch.softmax(logits, 0)).tolist()
                scores = logits.tolist()
        right = [practice_is_right(kind, problem, *pair) for pair in raw]
        sets.append(PracticeSet(list(group), examples, weights, right, scores))
    return sets


def _uniform_over_kept(sets: Sequence[PracticeSet], keep: Sequence[Sequence[bool]]
                       ) -> tuple[list[list[Example]], list[list[float] | None]]:
    """Uniform weight on each set's kept examples, none on the others; a set that keeps none gives no update."""
    examples, weights = [], []
    for s, kept in zip(sets, keep, strict=True):
        n_kept = sum(kept)
        examples.append(list(s.examples) if n_kept else [])
        weights.append([k / n_kept for k in kept] if n_kept else None)
    return examples, weights


def right_only(sets: Sequence[PracticeSet]) -> tuple[list[list[Example]], list[list[float] | None]]:
    """The oracle's (examples, weights): uniform weight on each set's right examples, none on the others.

    A set with no right example gives no examples (no update: the oracle knows the data is useless).
    Needs labels a method never has; it measures how much any weighting of this data could gain.
    """
    return _uniform_over_kept(sets, [[bool(r) for r in s.right] for s in sets])


def _steps_hold(answer: str) -> bool:
    """The fixed rule's test: every worked equation in ``answer`` holds (and it has at least one)."""
    return equations_hold(answer) == 1.0


def checked_only(sets: Sequence[PracticeSet]) -> tuple[list[list[Example]], list[list[float] | None]]:
    """A fixed label-free rule's (examples, weights): uniform weight on the examples whose worked equations all
    hold (:func:`~mass_ref.lm.practice.equations_hold` = 1), none on the others; a set with none gives no update.

    No labels and nothing learned: what the scorer's equation feature could do on its own, as a hand-written rule.
    """
    return _uniform_over_kept(sets, [[_steps_hold(answer) for _, answer in s.examples] for s in sets])


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


def ttt_results(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    problems: Sequence[ArithmeticProblem],
    examples: Sequence[Sequence[Example]] | None,
    *,
    num_steps: int,
    inner_lr: float,
    max_new_tokens: int,
    weights: Sequence[Sequence[float] | None] | None = None,
    progress: bool = False,
    batch_size: int = 16,
    update_rows: int = 12,
) -> tuple[list[bool], list[float]]:
    """Per problem i: SGD on ``examples[i]`` (weights ``weights[i]``), then the greedy answer's correctness
    and the gold solution's loss ℓ_SFT(φ'; T, R*), both under the same adapted φ' (one update each).
    The loss is MASS_gold's outer loss and a far less noisy measure than accuracy of whether the
    examples helped.

    ``examples=None`` (or an empty list for a problem, or ``num_steps=0``) answers without an update.
    Problems are batched, ``batch_size`` per ``generate`` and gold-loss forward (left-padded: the same answers
    as one at a time up to float rounding, see :mod:`mass_ref.lm.generate`). Adapted problems run each with its
    own φ' in those batches (:func:`~mass_ref.lm.per_problem_lora.per_problem_lora`), and their updates are
    taken together, at most ``update_rows`` examples per forward and backward
    (:func:`~mass_ref.lm.per_problem_lora.sgd_per_problem`; lower it if that runs out of memory). The model's
    LoRA tensors are never changed. Returns ``(correct, gold_loss)``.
    """
    if examples is not None and len(examples) != len(problems):
        raise ValueError(f"need one example list per problem; got {len(examples)} for {len(problems)} problems.")
    if weights is not None and len(weights) != len(problems):
        raise ValueError(f"need one weight list (or None) per problem; got {len(weights)} for {len(problems)}.")
    if batch_size < 1 or update_rows < 1:
        raise ValueError(f"batch_size and update_rows must be at least 1; got {batch_size} and {update_rows}.")
    updates = [[] if examples is None or num_steps == 0 else list(examples[i]) for i in range(len(problems))]
    for i, ex in enumerate(updates):
        w = None if weights is None or not ex else weights[i]
        if w is not None and len(w) != len(ex):
            raise ValueError(f"problem {i} has {len(ex)} examples but {len(w)} weights; pass one weight per example.")
    answers: list[str] = [""] * len(problems)
    losses: list[float] = [0.0] * len(problems)
    bar = progress_bar(range(len(problems)), enabled=progress, desc="test-time training")
    unadapted = [i for i, ex in enumerate(updates) if not ex]
    adapted = [i for i, ex in enumerate(updates) if ex]
    for chunk in _chunks(unadapted, batch_size):  # one φ for all of them
        _answer_and_score(model, tokenizer, fmt, [problems[i] for i in chunk], max_new_tokens, answers, losses, chunk)
        bar.update(len(chunk))
    for chunk in _chunks(adapted, batch_size):  # each problem with its own φ'
        parts = []
        for part in _chunks_by_size(chunk, [len(updates[i]) for i in chunk], update_rows):
            part_weights = None if weights is None else [weights[i] for i in part]
            batch, rows, w = _update_batch(tokenizer, fmt, [updates[i] for i in part], part_weights)
            parts.append(sgd_per_problem(model, batch, rows, num_problems=len(part), num_steps=num_steps, lr=inner_lr,
                                         weights=w))
        stacked = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
        with per_problem_lora(model) as lora:
            lora.use(stacked, range(len(chunk)))
            _answer_and_score(model, tokenizer, fmt, [problems[i] for i in chunk], max_new_tokens, answers, losses,
                              chunk)
        bar.update(len(chunk))
    bar.close()
    return [is_correct(a, p.answer) for a, p in zip(answers, problems)], losses


def _chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[k:k + size]) for k in range(0, len(items), size)]


def _chunks_by_size(items: Sequence[int], sizes: Sequence[int], limit: int) -> list[list[int]]:
    """Consecutive groups of ``items`` whose ``sizes`` sum to at most ``limit`` (an item above it goes alone)."""
    groups: list[list[int]] = [[]]
    total = 0
    for item, size in zip(items, sizes):
        if groups[-1] and total + size > limit:
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += size
    return groups


def _update_batch(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, examples: Sequence[Sequence[Example]],
                  weights: Sequence[Sequence[float] | None] | None) -> tuple[SFTBatch, list[int], torch.Tensor | None]:
    """One SFT batch of several problems' examples, each example's problem index, and the weights (None: 1/m_p)."""
    rows = [p for p, ex in enumerate(examples) for _ in ex]
    batch = sft_batch(tokenizer, [pair for ex in examples for pair in ex], add_bos=fmt.add_bos)
    if weights is None or all(w is None for w in weights):
        return batch, rows, None
    flat = [x for ex, w in zip(examples, weights) for x in ([1.0 / len(ex)] * len(ex) if w is None else w)]
    return batch, rows, torch.tensor(flat)


def _answer_and_score(model: nn.Module, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat,
                      problems: Sequence[ArithmeticProblem], max_new_tokens: int, answers: list[str],
                      losses: list[float], where: Sequence[int]) -> None:
    """Greedy answers and gold losses of ``problems``, in one batch, written to ``answers``/``losses`` at ``where``."""
    device = next(model.parameters()).device
    decoded = generate_answers(model, tokenizer, [fmt.solve(p.question) for p in problems],
                               max_new_tokens=max_new_tokens, batch_size=len(problems), add_bos=fmt.add_bos)
    gold = sft_batch(tokenizer, [fmt.solve_pair(p.question, p.solution) for p in problems], add_bos=fmt.add_bos)
    with torch.no_grad(), eval_mode(model):
        gold_losses = sft_losses_per_example(model, gold.to(device)).tolist()
    for k, i in enumerate(where):
        answers[i], losses[i] = decoded[k], gold_losses[k]


def scorer_auc(sets: Sequence[PracticeSet]) -> float:
    """AUC of the scorer's logits for right vs wrong self-written examples, pooled over problems (NaN if a
    class is empty).

    1.0: every right example outranks every wrong one; 0.5: the scorer cannot tell them apart.
    Logits, not weights, are compared: weights are normalised within each problem, logits are on one
    scale. Examples whose truth is unknown are left out.
    """
    scores, labels = [], []
    for s in sets:
        if s.scores is None:
            continue
        for z, right in zip(s.scores, s.right):
            if right is not None:
                scores.append(z)
                labels.append(float(right))
    if not scores or min(labels) == max(labels):
        return float("nan")
    return roc_auc(torch.tensor(scores), torch.tensor(labels))


def selection_rates(sets: Sequence[PracticeSet]) -> dict[str, float]:
    """How often a pick among each set's examples is right, over all sets (a set with no example counts as wrong).

    ``top_scored``: the example with the scorer's highest logit (NaN without scores); ``majority``: an
    example with the most common final answer (self-consistency's vote; ties go to the first);
    ``checked``: the first example whose worked equations all hold (:func:`checked_only`'s rule); ``any``:
    at least one right example (what the oracle can pick). An update on one problem's examples moves its
    answer towards the examples it weighs most, so it can only beat answering without an update where
    these picks are right more often than the unadapted answer is. Examples whose truth is unknown count
    as wrong.

    >>> s = PracticeSet(["a", "b", "c"], [("Q", "2 + 2 = 4\\n#### 4"), ("Q", "2 + 2 = 5\\n#### 5"), ("Q", "#### 5")],
    ...                 None, [True, False, False], [2.0, 0.0, 1.0])
    >>> selection_rates([s])
    {'top_scored': 1.0, 'majority': 0.0, 'checked': 1.0, 'any': 1.0}
    """
    if not sets:
        raise ValueError("sets is empty; pass the PracticeSets of at least one problem.")
    top = majority = checked = anything = 0.0
    for s in sets:
        right = [bool(r) for r in s.right]
        if not right:
            continue
        if s.scores is not None:
            top += right[max(range(len(right)), key=s.scores.__getitem__)]
        votes = answer_agreement([answer for _, answer in s.examples])
        majority += right[max(range(len(right)), key=votes.__getitem__)] and max(votes) > 0
        checked += next((r for r, (_, answer) in zip(right, s.examples) if _steps_hold(answer)), False)
        anything += any(right)
    n = len(sets)
    scored = any(s.scores is not None for s in sets)
    return {"top_scored": top / n if scored else float("nan"), "majority": majority / n, "checked": checked / n,
            "any": anything / n}
