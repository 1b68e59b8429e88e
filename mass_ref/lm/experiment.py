"""The LM experiment of chapter 5: train every method for every seed (resumable), then compare them.

One experiment = a base model (the tiny arithmetic LM or SmolLM2-135M-Instruct, with fresh LoRA
adapters), a list of trained methods and seeds, and one test-time budget. :func:`train_lm_methods`
runs :func:`~mass_ref.lm.trainer.train_lm_mass` once per (method, seed) with its own checkpoint in
``output_dir`` (so a killed run resumes where it stopped), and :func:`evaluate_lm_methods`
answers held-out problems with every row below under the same budget. "own" practice is the
kind the config trains with (``config.practice``); rows that share a LoRA state and a practice
kind share the very same sampled examples, so they differ only in their weights.

==========================  ==============================  ================================================
row                         LoRA tensors φ / scorer         test-time data and weights
==========================  ==============================  ================================================
base                        initial (B = 0: the base model) none
base_ttt                    initial                         m random training problems, gold, 1/m
tt_ss                       initial                         m own practice, w_i = 1/m
oracle_right_only           initial                         tt_ss's examples, weight on the right ones only
checked_only                initial                         tt_ss's examples, weight on those whose steps hold
tt_ss_related               initial                         m related problems it writes, 1/m
oracle_right_only_related   initial                         tt_ss_related's, right ones only
related_gold                initial                         m problems of T's skills with gold solutions
solver_grpo                 RL-trained on solving           none
<M>_no_update               meta-trained by M               none (the trained LoRA alone)
<M>_uniform                 meta-trained by M               m own practice from the trained generator, 1/m
<M>_oracle_right_only       meta-trained by M               the same examples, weight on the right ones only
<M>_checked_only            meta-trained by M               the same examples, weight on those whose steps hold
<M> (mass_gold, mass)       meta-trained by M               the same examples, w_i = s_η
==========================  ==============================  ================================================

How to read them: M − M_no_update is what the test-time update on practice adds to the trained
weights (at most M_oracle_right_only − M_no_update: the best any weighting of them could add),
M − M_uniform what the scorer's ranking adds, M − M_checked_only what the learned scorer adds
over a fixed label-free rule (keep the attempts whose worked equations hold:
:func:`~mass_ref.lm.evaluate.checked_only`), M_no_update − base what meta-training did to the
solver itself, and oracle_right_only − tt_ss how much room any weighting had.

The notebook and ``python -m mass_ref train|evaluate`` (:mod:`mass_ref.lm.run_config`) call these same
functions; the base model comes from :func:`~mass_ref.lm.spec.load_lm_for_mass`.

Introduced in notebooks/05_mass_llm.ipynb.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mass_ref.checkpoint import load_checkpoint
from mass_ref.distributed import DataParallel
from mass_ref.lm.evaluate import (PracticeSet, checked_only, practice_sets, random_practice, related_practice,
                                  right_only, scorer_auc, ttt_results)
from mass_ref.lm.formats import PromptFormat
from mass_ref.lm.mass import LMMassConfig
from mass_ref.lm.models import lora_parameters
from mass_ref.lm.problems import ProblemSource
from mass_ref.lm.scorer import NUM_STATS, LMScorer
from mass_ref.lm.tiny import TinyLMSpec
from mass_ref.lm.trainer import train_lm_mass

__all__ = ["EVAL_METHODS", "PAIRED_DIFFERENCES", "SHIPPED_RUNS", "TINY_ONLY_ROWS", "TRAINED_METHODS", "as_problem_source",
           "checkpoint_path", "evaluate_lm_methods", "evaluation_rows", "load_trained_state", "model_fingerprint",
           "train_lm_methods", "use_shipped_runs"]

TRAINED_METHODS = {"mass_gold": ("mass", "gold"), "mass": ("mass", "verifier"), "solver_grpo": ("solver_grpo", "gold")}
"""Trained method → (``LMMassConfig.method``, ``LMMassConfig.outer_mode``)."""
_ROWS: dict[str, tuple[str | None, str | None, str | None]] = {
    "base": (None, None, None),
    "base_ttt": (None, "random", "uniform"),
    "tt_ss": (None, "own", "uniform"),
    "oracle_right_only": (None, "own", "right_only"),
    "checked_only": (None, "own", "checked_only"),
    "tt_ss_related": (None, "related", "uniform"),
    "oracle_right_only_related": (None, "related", "right_only"),
    "related_gold": (None, "related_gold", "uniform"),
    "solver_grpo": ("solver_grpo", None, None),
    **{name: row for m in ("mass_gold", "mass") for name, row in (
        (f"{m}_no_update", (m, None, None)), (f"{m}_uniform", (m, "own", "uniform")),
        (f"{m}_oracle_right_only", (m, "own", "right_only")), (f"{m}_checked_only", (m, "own", "checked_only")),
        (m, (m, "own", "scorer")))},
}
"""Row → (trained method whose LoRA/scorer it loads or None, practice data, weighting); see the table above."""
EVAL_METHODS = tuple(_ROWS)
TINY_ONLY_ROWS = ("related_gold", "oracle_right_only_related")
"""Rows that need the tiny task family's skill labels (related problems and their truth); not for benchmarks."""
PAIRED_DIFFERENCES: tuple[tuple[str, str], ...] = (
    *((row, "tt_ss") for row in EVAL_METHODS if row != "tt_ss"),
    ("mass", "mass_no_update"), ("mass", "mass_uniform"), ("mass_gold", "mass_gold_no_update"),
    ("mass_gold", "mass_gold_uniform"), ("mass_oracle_right_only", "mass_no_update"),
    ("mass_gold_oracle_right_only", "mass_gold_no_update"), ("mass_no_update", "base"), ("mass_gold_no_update", "base"),
    ("mass", "mass_checked_only"), ("mass_gold", "mass_gold_checked_only"), ("mass_checked_only", "mass_no_update"),
    ("mass_gold_checked_only", "mass_gold_no_update"), ("oracle_right_only_related", "tt_ss_related"))
"""(a, b) pairs whose per-problem differences :func:`summarize_lm_methods` reports when both rows were run."""


def evaluation_rows(trained: Sequence[str], test_data: str = "tiny") -> list[str]:
    """The rows of :data:`EVAL_METHODS` that can be evaluated after training ``trained`` on ``test_data``.

    A row needs its trained method among ``trained``; :data:`TINY_ONLY_ROWS` need the tiny task family.
    """
    return [row for row in EVAL_METHODS if _ROWS[row][0] in (None, *trained)
            and (test_data == "tiny" or row not in TINY_ONLY_ROWS)]


SHIPPED_RUNS = Path(__file__).parent / "metatrained"
"""Meta-trained checkpoints that ship with the package (``python -m mass_ref train --config configs/lm_mass_tiny.yaml``)."""
FINGERPRINT_FILE = "model_fingerprint.json"


def as_problem_source(problems: TinyLMSpec | ProblemSource) -> ProblemSource:
    """``problems`` itself, or for a :class:`TinyLMSpec` the source of its task family."""
    return ProblemSource(tiny=problems) if isinstance(problems, TinyLMSpec) else problems


def _reset_lora(model: nn.Module, initial: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, tensor in lora_parameters(model).items():
            tensor.copy_(initial[name])


def checkpoint_path(output_dir: str | Path, method: str, seed: int) -> Path:
    """Where :func:`train_lm_methods` keeps the checkpoint of one (method, seed) run."""
    return Path(output_dir) / f"{method}_seed{seed}.pt"


def train_lm_methods(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    config: LMMassConfig,
    problems: TinyLMSpec | ProblemSource,
    *,
    methods: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    output_dir: str | Path,
    checkpoint_every: int = 10,
    stop_after: int | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[str, int, list[dict[str, float]]], None] | None = None,
    parallel: DataParallel | None = None,
) -> dict[str, dict[int, list[dict[str, float]]]]:
    """Train each of ``methods`` (keys of ``TRAINED_METHODS``) for each seed, from the same initial LoRA.

    ``config``'s ``method``/``outer_mode`` are overridden per method. Training problems of step t
    are ``problems.train(meta_batch_size, seed=10_000 + t)`` (:class:`ProblemSource`; a
    :class:`TinyLMSpec` means its task family): the same for every method and seed; the seed changes
    the scorer's initialisation and all sampling. The model's LoRA tensors are left at their initial
    values. ``stop_after`` stops every run after that many steps (checkpointed), to interrupt on
    purpose. ``parallel``: this rank, when data-parallel (see :func:`~mass_ref.lm.trainer.train_lm_mass`).

    Returns:
        ``{method: {seed: per-step diagnostics}}``.
    """
    unknown = [m for m in methods if m not in TRAINED_METHODS]
    if unknown:
        raise ValueError(f"unknown trained method(s) {unknown}; choose from {sorted(TRAINED_METHODS)}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    initial = {name: t.detach().clone() for name, t in lora_parameters(model).items()}
    device = next(iter(initial.values())).device
    if parallel is None or parallel.is_main:
        (output_dir / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": model_fingerprint(model)}) + "\n")

    source = as_problem_source(problems)

    def problems_for_step(step: int) -> list[Any]:
        return source.train(config.meta_batch_size, seed=10_000 + step)

    histories: dict[str, dict[int, list[dict[str, float]]]] = {}
    try:
        for method in methods:
            kind, outer_mode = TRAINED_METHODS[method]
            run_config = dataclasses.replace(config, method=kind, outer_mode=outer_mode)
            for seed in seeds:
                _reset_lora(model, initial)
                scorer = (_new_scorer(model, seed, device, use_hidden_states=run_config.scorer_hidden_states)
                          if kind == "mass" and run_config.train_scorer else None)
                callback = None if on_checkpoint is None else (lambda h, m=method, s=seed: on_checkpoint(m, s, h))
                histories.setdefault(method, {})[seed] = train_lm_mass(
                    model, tokenizer, fmt, scorer, run_config, problems_for_step, steps=steps, seed=seed,
                    checkpoint_path=checkpoint_path(output_dir, method, seed), checkpoint_every=checkpoint_every,
                    stop_after=stop_after, progress=progress, on_checkpoint=callback, parallel=parallel)
    finally:
        _reset_lora(model, initial)
    return histories


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of every parameter (base weights and current LoRA tensors): which model a run started from.

    Recorded per output folder (``model_fingerprint.json``, read by :func:`use_shipped_runs`); its recipe
    stays fixed so that shipped folders keep matching. Each checkpoint also records the full
    :func:`~mass_ref.checkpoint.fingerprint` of its starting model and scorer, checked on resume.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def use_shipped_runs(
    model: nn.Module, config: LMMassConfig, *, methods: Sequence[str], seeds: Sequence[int], steps: int,
    output_dir: str | Path, shipped_dir: str | Path,
) -> list[str]:
    """Copy finished checkpoints from ``shipped_dir`` into ``output_dir`` where they are exactly this run's.

    A checkpoint is used only when the folder was trained from this very model (its
    :func:`model_fingerprint`, LoRA at its initial values), with this config, seed and number of
    steps; anything else is left to :func:`train_lm_methods` to train. Existing files in
    ``output_dir`` are never replaced. Returns the names of the files copied.
    """
    shipped_dir, output_dir = Path(shipped_dir), Path(output_dir)
    recorded = shipped_dir / FINGERPRINT_FILE
    if not recorded.is_file() or json.loads(recorded.read_text())["fingerprint"] != model_fingerprint(model):
        return []
    output_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for method in methods:
        kind, outer_mode = TRAINED_METHODS[method]
        expected = dataclasses.asdict(dataclasses.replace(config, method=kind, outer_mode=outer_mode))
        for seed in seeds:
            source, target = checkpoint_path(shipped_dir, method, seed), checkpoint_path(output_dir, method, seed)
            state = load_checkpoint(source)
            if target.exists() or state is None:
                continue
            if state["config"] == expected and state["seed"] == seed and len(state["history"]) == steps:
                shutil.copyfile(source, target)
                copied.append(target.name)
    return copied


def _new_scorer(model: nn.Module, seed: int, device: torch.device, *, use_hidden_states: bool) -> LMScorer:
    """A fresh scorer, fp32 whatever the base weights' dtype (float64 only for an exact float64 model)."""
    dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scorer = LMScorer(model.config.hidden_size, use_hidden_states=use_hidden_states)
        return scorer.to(device=device, dtype=dtype)


def _finished_checkpoint(output_dir: Path, method: str, seed: int, steps: int) -> dict[str, Any]:
    """The checkpoint of a run that has taken at least ``steps`` meta-steps; a ValueError naming the fix otherwise."""
    path = checkpoint_path(output_dir, method, seed)
    state = load_checkpoint(path)
    done = 0 if state is None else len(state["history"])
    if done < steps:
        raise ValueError(f"{path} holds {done}/{steps} steps; train it first (train_lm_methods / "
                         "`python -m mass_ref train` resume where they stopped).")
    return state


def load_trained_state(model: nn.Module, output_dir: str | Path, method: str, seed: int,
                       steps: int) -> LMScorer | None:
    """Load a finished run's LoRA tensors into ``model`` (in place); return its scorer (None if it has none).

    The run is ``checkpoint_path(output_dir, method, seed)`` and must have taken ``steps`` meta-steps.

    Raises:
        ValueError: the run is missing or unfinished, or its scorer reads another number of statistics
            (another version of mass_ref).
    """
    state = _finished_checkpoint(Path(output_dir), method, seed, steps)
    with torch.no_grad():
        for name, tensor in lora_parameters(model).items():
            tensor.copy_(state["lora"][name])
    if state["scorer"] is None:
        return None
    trained_stats = state["scorer"]["stats.weight"].shape[-1]
    if trained_stats != NUM_STATS:
        raise ValueError(f"{checkpoint_path(output_dir, method, seed)} holds a scorer of {trained_stats} statistics, "
                         f"from another version of mass_ref; this one computes {NUM_STATS}. Delete the file to retrain "
                         "it (the package's shipped runs are this version's).")
    scorer = _new_scorer(model, seed, next(model.parameters()).device,
                         use_hidden_states=state["config"].get("scorer_hidden_states", True))
    scorer.load_state_dict(state["scorer"])
    return scorer


def evaluate_lm_methods(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    config: LMMassConfig,
    problems: TinyLMSpec | ProblemSource,
    *,
    methods: Sequence[str],
    seed: int,
    steps: int,
    output_dir: str | Path,
    n_problems: int,
    num_examples: int,
    num_inner_steps: int = 1,
    update_rows: int = 12,
    progress: bool = False,
    finished: Mapping[str, dict[str, Any]] | None = None,
    on_row: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Answer ``n_problems`` held-out problems with every row of ``methods`` (see the table above).

    Test problems are ``problems.test(n_problems, seed=20_000 + seed)``; Base TTT draws from
    ``problems.train(500, seed=30_000 + seed)``, related gold from ``problems.test(2_000, seed=40_000 +
    seed)`` (same skill sets, other problems); all self-written data is sampled with ``seed``; every
    update is ``num_inner_steps`` SGD steps of size ``config.inner_lr`` on m = ``num_examples``
    examples. Trained rows read their checkpoint for ``seed`` from ``output_dir``.

    The problems' updates run together, at most ``update_rows`` examples per forward and backward
    (:func:`~mass_ref.lm.evaluate.ttt_results`). It sets the evaluation's peak memory, and it changes the
    numbers only by float rounding. On SmolLM2-135M on a CPU, 12 rows peak at 12 GB of RAM and 6 rows at 6.8 GB;
    6 rows are also faster there (measured on chapter 5's held-out problems, m = 6).

    Resuming: rows in ``finished`` (an earlier call's results, e.g. read back from JSON) are returned as
    given and not run again; ``on_row(row, result)`` is called as each other row finishes, so a caller can
    store it. Everything is seeded, so a resumed evaluation answers exactly as an uninterrupted one.

    Returns:
        ``{row: {"correct": [bool]*n, "gold_loss": [float]*n, "sets": [PracticeSet] | None,
        "auc": float}}`` (``auc``: the scorer's right-vs-wrong AUC, NaN without a scorer).
    """
    unknown = [m for m in methods if m not in _ROWS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(EVAL_METHODS)}.")
    if isinstance(update_rows, bool) or not isinstance(update_rows, int) or update_rows < 1:
        raise ValueError(f"update_rows must be an integer >= 1 (examples per update pass); got {update_rows!r}.")
    output_dir = Path(output_dir)
    for trained in dict.fromkeys(_ROWS[m][0] for m in methods if _ROWS[m][0] is not None):  # before any work
        _finished_checkpoint(output_dir, trained, seed, steps)
    source = as_problem_source(problems)
    needs_skills = [m for m in methods if m in TINY_ONLY_ROWS]
    if needs_skills and source.data.test != "tiny":
        raise ValueError(f"rows {needs_skills} need the tiny task family's skill labels; the test data is "
                         f"{source.data.test!r}: leave them out (every row but TINY_ONLY_ROWS works on benchmarks).")
    held_out = source.test(n_problems, seed=20_000 + seed)
    initial = {name: t.detach().clone() for name, t in lora_parameters(model).items()}
    budget = dict(num_steps=num_inner_steps, inner_lr=config.inner_lr, max_new_tokens=config.answer_max_new_tokens,
                  update_rows=update_rows, progress=progress)
    results: dict[str, dict[str, Any]] = {m: dict(r) for m, r in (finished or {}).items() if m in methods}
    by_trained: dict[str | None, list[str]] = {}
    for method in methods:  # one LoRA state at a time, its practice sampled once for all its rows
        if method not in results:
            by_trained.setdefault(_ROWS[method][0], []).append(method)
    try:
        for trained, rows in by_trained.items():
            _reset_lora(model, initial)
            scorer = None if trained is None else load_trained_state(model, output_dir, trained, seed, steps)
            sampled: dict[str, list[PracticeSet]] = {}
            for method in rows:
                _, data, weighting = _ROWS[method]
                kind = config.practice if data == "own" else data
                sets, examples, weights = None, None, None
                if data == "random":
                    pool = source.train(500, seed=30_000 + seed)
                    examples = random_practice(pool, fmt, len(held_out), m=num_examples, seed=seed)
                elif data == "related_gold":
                    pool = source.test(2_000, seed=40_000 + seed)
                    examples = related_practice(pool, fmt, held_out, m=num_examples, seed=seed)
                elif data is not None:
                    if kind not in sampled:
                        sampled[kind] = practice_sets(
                            model, tokenizer, fmt, held_out, m=num_examples, temperature=config.temperature,
                            max_new_tokens=config.practice_max_new_tokens, seed=seed, scorer=scorer, kind=kind)
                    sets = sampled[kind]
                    examples = [s.examples for s in sets]
                    if weighting == "right_only":
                        examples, weights = right_only(sets)
                    elif weighting == "checked_only":
                        examples, weights = checked_only(sets)
                    elif weighting == "scorer":
                        weights = [s.weights for s in sets]
                correct, gold_loss = ttt_results(model, tokenizer, fmt, held_out, examples, weights=weights, **budget)
                auc = scorer_auc(sets) if sets is not None and weighting == "scorer" else float("nan")
                results[method] = {"correct": correct, "gold_loss": gold_loss, "sets": sets, "auc": auc}
                if on_row is not None:
                    on_row(method, results[method])
    finally:
        _reset_lora(model, initial)
    return {method: results[method] for method in methods}
