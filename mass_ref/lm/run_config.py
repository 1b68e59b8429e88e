"""The LM experiment from a config file (``experiment: lm_mass``): :class:`LMRunConfig`, train and evaluate.

    python -m mass_ref train    --config configs/lm_mass_tiny.yaml    # every LM method x seed (chapter 5)
    python -m mass_ref evaluate --config configs/lm_mass_tiny.yaml    # every evaluation row's accuracy -> eval.json

:func:`train` writes ``<method>_seed<N>.pt`` per trained method and seed
(:func:`~mass_ref.lm.experiment.train_lm_methods`) and metrics lines tagged with ``method`` and
``seed``; :func:`evaluate` keeps each seed's answers in ``eval_seed<N>.json`` (row by row in
``eval_seed<N>.partial.json`` while it runs, so a killed evaluation resumes at the row it stopped in)
and pools them with :func:`~mass_ref.lm.summary.summarize_lm_methods` into ``eval.json``. The
base model is cached in ``cache_dir``. Registered in :data:`mass_ref.config.EXPERIMENTS`.

Introduced in notebooks/05_mass_llm.ipynb (data-parallel runs: notebooks/07_mass_gpu.ipynb).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mass_ref.config import ConfigError, EvaluateSection, ExperimentConfig, check_positive_int, input_path, place_error
from mass_ref.distributed import data_parallel_from_env
from mass_ref.lm.experiment import EVAL_METHODS, TRAINED_METHODS, evaluate_lm_methods, evaluation_rows, train_lm_methods
from mass_ref.lm.mass import LMMassConfig
from mass_ref.lm.memory import (MemoryEstimate, ModelShape, generation_memory, meta_gradient_memory,
                                 policy_chunk_memory, weights_memory)
from mass_ref.lm.models import smollm2_gguf_path
from mass_ref.lm.problems import LMDataSpec, ProblemSource
from mass_ref.lm.spec import ALL_LINEAR, LMModelSpec, load_lm_for_mass, spec_device
from mass_ref.lm.summary import run_environment, summarize_lm_methods
from mass_ref.lm.tiny import TinyLMSpec, task_problems
from mass_ref.run_folder import check_recorded_config, prepare_output_dir, run_lock, write_atomically, write_metrics

__all__ = ["CONFIG", "LMRunConfig", "Runs", "evaluate", "report", "run_memory_estimates", "train"]


@dataclass(frozen=True)
class LMRunConfig(ExperimentConfig):
    """The LM experiment (``experiment: lm_mass``): every method of ``methods`` × every seed, then evaluation.

    ``mass`` holds :class:`~mass_ref.lm.LMMassConfig` with its default ``method``/``outer_mode``:
    :func:`~mass_ref.lm.experiment.train_lm_methods` sets both per trained method, so a config
    file may not give them (and :meth:`to_dict` leaves them out).
    """

    EXPERIMENT: ClassVar[str] = "lm_mass"
    NOT_IN_FILE: ClassVar[dict[str, str]] = {
        f"mass.{name}": "is set per trained method from `methods` (mass_gold: mass/gold, mass: mass/verifier, "
                        "solver_grpo: solver_grpo/gold, see mass_ref.lm.experiment.TRAINED_METHODS); remove it"
        for name in ("method", "outer_mode")}

    steps: int = 40
    checkpoint_every: int = 5
    n_seeds: int = 3
    methods: tuple[str, ...] = ("mass_gold", "mass", "solver_grpo")
    model: LMModelSpec = field(default_factory=LMModelSpec)
    data: LMDataSpec = field(default_factory=LMDataSpec)
    mass: LMMassConfig = field(default_factory=LMMassConfig)
    evaluate: EvaluateSection = field(default_factory=lambda: EvaluateSection(n_problems=100))
    cache_dir: str = "build/cache"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self.n_seeds, "n_seeds")
        if not self.methods:
            raise ConfigError(f"methods must name at least one trained method of {sorted(TRAINED_METHODS)}.")
        for i, method in enumerate(self.methods):
            if method not in TRAINED_METHODS:
                raise ConfigError(f"methods[{i}] must be one of {sorted(TRAINED_METHODS)} (base, base_ttt and "
                                  f"tt_ss need no training and are always evaluated); got {method!r}.")
            if method in self.methods[:i]:
                raise ConfigError(f"methods[{i}] repeats {method!r}; name each method once.")
        if not self.cache_dir.strip():
            raise ConfigError("cache_dir must be a non-empty path, e.g. build/cache.")
        for i, target in enumerate(self.model.lora_targets):  # else add_lora fails only after the model loads
            if target not in ALL_LINEAR:
                raise ConfigError(f"model.lora_targets[{i}] must be one of {ALL_LINEAR} (the linear layers of both "
                                  f"models); got {target!r}.")
        fraction = self.model.tiny.practice_fraction
        if not 0.0 <= fraction <= 1.0:  # else pretraining fails after the work started
            raise ConfigError(f"model.tiny.practice_fraction must be in [0, 1]; got {fraction!r}.")
        try:  # the task family (numbers, difficulties) must give both training and test problems
            task_problems(self.model.tiny, 0, split="test", seed=0)
        except ValueError as error:
            raise ConfigError(place_error("model.tiny", TinyLMSpec, error)) from error

    @property
    def seeds(self) -> tuple[int, ...]:
        """``seed, seed + 1, ..., seed + n_seeds - 1``."""
        return tuple(range(self.seed, self.seed + self.n_seeds))

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        for dotted in self.NOT_IN_FILE:
            section, name = dotted.split(".")
            del data[section][name]
        return data


CONFIG = LMRunConfig
"""The config class of ``experiment: lm_mass`` (see :data:`mass_ref.config.EXPERIMENTS`)."""

Runs = dict[tuple[str, int], list[dict[str, float]]]
"""LM training histories: ``{(method, seed): one dict of diagnostics per meta-step}``."""


def _recorded_runs(out: Path) -> Runs:
    """The per-(method, seed) histories that ``metrics.jsonl`` records (empty when there is none)."""
    path, runs = out / "metrics.jsonl", {}
    for line in path.read_text().splitlines() if path.is_file() else ():
        row = json.loads(line)
        method, seed = row.pop("method"), row.pop("seed")
        row.pop("step")
        runs.setdefault((method, seed), []).append(row)
    return runs


def _write_lm_metrics(out: Path, config: LMRunConfig, runs: Runs) -> None:
    write_metrics(out, ({"method": method, "seed": seed, "step": i + 1, **metrics}
                        for method in config.methods for seed in config.seeds
                        for i, metrics in enumerate(runs.get((method, seed), []))))


def train(config: LMRunConfig, *, progress: bool = True, stop_after: int | None = None) -> Runs:
    """Train every method of ``config.methods`` for every seed, resuming from ``output_dir``'s checkpoints.

    ``stop_after`` stops each (method, seed) run after that many meta-steps (to interrupt on purpose).
    Under ``torchrun``/``accelerate launch`` the ranks train data-parallel (:mod:`mass_ref.distributed`):
    rank 0 prepares the output folder and the model cache first, and alone writes files.
    """
    source = check_run_inputs(config, training=True)
    parallel = data_parallel_from_env()
    if not parallel.is_main:
        return _train(config, source, parallel, Path(config.output_dir), progress, stop_after)
    out = prepare_output_dir(config)
    with run_lock(out):  # a second `train` on this folder is refused; a killed run's lock is taken over
        return _train(config, source, parallel, out, progress, stop_after)


def _train(config: LMRunConfig, source: ProblemSource, parallel: Any, out: Path, progress: bool,
           stop_after: int | None) -> Runs:
    """:func:`train` after the checks, in the prepared (rank 0: locked) output folder."""
    if not parallel.is_main:
        parallel.barrier()  # rank 0 first creates the folder and fills the model cache, then the others load
    runs = _recorded_runs(out)
    model, tokenizer, fmt = load_lm_for_mass(config.model, config.cache_dir, progress=progress and parallel.is_main)
    if parallel.is_main:
        parallel.barrier()

    def on_checkpoint(method: str, seed: int, history: list[dict[str, float]]) -> None:
        runs[method, seed] = history
        _write_lm_metrics(out, config, runs)

    histories = train_lm_methods(
        model, tokenizer, fmt, config.mass, source, methods=config.methods,
        seeds=config.seeds, steps=config.steps, output_dir=out, checkpoint_every=config.checkpoint_every,
        stop_after=stop_after, progress=progress, on_checkpoint=on_checkpoint, parallel=parallel)
    runs = {(method, seed): history for method, per_seed in histories.items() for seed, history in per_seed.items()}
    if parallel.is_main:
        _write_lm_metrics(out, config, runs)  # also for runs that were already finished (no checkpoint this time)
    return runs


def evaluate(config: LMRunConfig, *, progress: bool = False) -> dict[str, float]:
    """Accuracy of the base methods and of every trained one on held-out problems, pooled over seeds.

    Writes ``eval_seed<N>.json`` per seed (reused when present) and ``eval.json``
    (:func:`~mass_ref.lm.summary.summarize_lm_methods`, with the trained runs' ``meta_steps`` and this evaluation's
    ``precision``, ``device`` and ``device_name``: :func:`~mass_ref.lm.summary.run_environment`).

    Raises:
        ConfigError: ``output_dir`` holds another config, or unfinished training (naming each run).
    """
    out = Path(config.output_dir)
    check_recorded_config(config, out, required=True)
    source = check_run_inputs(config, training=False)  # one source: a benchmark is read once for all seeds
    runs = _recorded_runs(out)
    unfinished = [f"{method} seed {seed}: {len(runs.get((method, seed), []))}/{config.steps}"
                  for method in config.methods for seed in config.seeds
                  if len(runs.get((method, seed), [])) < config.steps]
    if unfinished:
        raise ConfigError(f"{out} holds unfinished training ({'; '.join(unfinished)} meta-steps); run `train` "
                          "first (it resumes where it stopped).")
    methods = evaluation_rows(config.methods, config.data.test)
    model, tokenizer, fmt = load_lm_for_mass(config.model, config.cache_dir, progress=progress)
    per_seed: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in config.seeds:
        path, partial = out / f"eval_seed{seed}.json", out / f"eval_seed{seed}.partial.json"
        if not path.is_file():
            kept = json.loads(partial.read_text()) if partial.is_file() else {}  # rows a killed run finished

            def keep(row: str, result: dict[str, Any]) -> None:
                kept[row] = {key: result[key] for key in ("correct", "gold_loss", "auc")}
                write_atomically(partial, json.dumps(kept) + "\n")

            results = evaluate_lm_methods(
                model, tokenizer, fmt, config.mass, source, methods=methods, seed=seed,
                steps=config.steps, output_dir=out, n_problems=config.evaluate.n_problems,
                num_examples=config.evaluate.num_examples, num_inner_steps=config.evaluate.num_inner_steps,
                progress=progress, finished=kept, on_row=keep)
            kept = {m: {key: r[key] for key in ("correct", "gold_loss", "auc")} for m, r in results.items()}
            write_atomically(path, json.dumps(kept) + "\n")
            partial.unlink(missing_ok=True)
        per_seed[seed] = json.loads(path.read_text())
    summary = {**summarize_lm_methods(per_seed), "meta_steps": config.steps,
               **run_environment(config.mass.precision, next(model.parameters()).device)}
    write_atomically(out / "eval.json", json.dumps(summary, indent=2) + "\n")
    return summary


def report(config: LMRunConfig, command: str, result: Any) -> None:
    """Print what ``command`` ("train" or "evaluate") returned, for the command line, and in which precision."""
    environment = run_environment(config.mass.precision, spec_device(config.model))
    print(f"precision {environment['precision']} on {environment['device']} ({environment['device_name']})")
    if command == "train":
        for (method, seed), history in result.items():
            last = ", ".join(f"{key} {history[-1][key]:.3f}" for key in ("outer_loss", "answer_pass_rate")
                             if history[-1].get(key, float("nan")) == history[-1].get(key))  # skip NaN
            print(f"{method:12s} seed {seed}: {len(history)}/{config.steps} meta-steps; last step: {last}")
        print(f"checkpoints and metrics.jsonl in {config.output_dir}")
        return
    print(f"{result['n_seeds']} seed(s), {result['n_problems']} problems in all; accuracy and gold-answer loss:")
    for method in (m for m in EVAL_METHODS if f"acc_{m}" in result):
        print(f"  {method:26s} {result[f'acc_{method}']:.3f} ± {result[f'acc_{method}_ci95']:.3f}   "
              f"{result[f'gold_loss_{method}']:.3f} ± {result[f'gold_loss_{method}_ci95']:.3f}")


def check_run_inputs(config: LMRunConfig, *, training: bool) -> ProblemSource:
    """Check what a run reads and writes before any work: the model, the data files, the output folder.

    Returns the run's :class:`ProblemSource`, its benchmark files already read (the run reuses them).

    Raises:
        ConfigError: naming the field (``model.hub_id``, ``data.train_path``, ``output_dir``, ...), the
            file or record, and the fix.
    """
    if config.model.name == "hub":
        hub_id = config.model.hub_id
        looks_local = hub_id.startswith((".", "/", "~")) or hub_id.count("/") > 1  # hub ids are [owner/]name
        if looks_local and not input_path(hub_id).is_dir():
            raise ConfigError(f"model.hub_id {hub_id!r} is neither a folder here nor a hub id (owner/name); "
                              "give a save_pretrained folder or a Hugging Face model id.")
    elif config.model.name == "smollm2":
        try:
            smollm2_gguf_path()
        except (FileNotFoundError, ModuleNotFoundError) as error:
            raise ConfigError(f"model.name 'smollm2': {error}") from error
    n_train = config.mass.meta_batch_size if training else 0
    n_test = config.evaluate.n_problems  # also when training: a short test file must not surface after hours
    source = ProblemSource(config.data, config.model.tiny)
    try:
        source.check(train_problems=n_train, test_problems=n_test)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    out = Path(config.output_dir)
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(f"output_dir {str(out)!r} cannot be created: {existing} is a file; choose another folder "
                          "(--output-dir).")
    if training and not os.access(existing, os.W_OK):
        raise ConfigError(f"output_dir {str(out)!r} cannot be written ({existing} is not writable); choose another "
                          "folder (--output-dir).")
    return source


def run_memory_estimates(config: LMRunConfig, model_config: Any, *, prompt_tokens: int,
                         auto_precision: str = "bf16") -> dict[str, MemoryEstimate]:
    """Predicted peak bytes of each phase of one meta-step of ``config`` (:mod:`mass_ref.lm.memory`), and "peak".

    Every phase's estimate includes the weights (base, LoRA, Adam). ``model_config``: the base model's
    transformers config; ``prompt_tokens``: a prompt's length (a completion adds its max new tokens, the
    worst case). Per problem (meta-gradients run one problem at a time; generation too with
    ``per_problem_seeds``). Modes other than "unroll" are counted as "checkpointed" (first_order and
    truncated hold no more); precision "auto" counts as ``auto_precision`` (bf16 on a GPU that has it).
    """
    mass, spec = config.mass, config.model
    shape = ModelShape.from_config(model_config)
    precision = auto_precision if mass.precision == "auto" else mass.precision
    lora = dict(rank=spec.lora_rank, targets=spec.lora_targets, precision=precision)
    weights = weights_memory(shape, rank=spec.lora_rank, targets=spec.lora_targets,
                             weight_bytes=2 if spec.dtype in ("bfloat16", "float16") else 4)
    practice, answer = prompt_tokens + mass.practice_max_new_tokens, prompt_tokens + mass.answer_max_new_tokens
    per_step = 1 if mass.per_problem_seeds else mass.meta_batch_size
    m, k = mass.num_synthetic, mass.num_answers
    verifier = "mass" in config.methods
    phases = {
        "generate practice": generation_memory(shape, sequences=per_step * m, tokens=practice, precision=precision),
        "generate answers": generation_memory(shape, sequences=per_step * k, tokens=answer, precision=precision),
        "meta-gradient": meta_gradient_memory(
            shape, "unroll" if mass.meta_gradient == "unroll" else "checkpointed", m=m, seq_len=practice,
            supervised=mass.practice_max_new_tokens, num_steps=mass.num_inner_steps,
            outer_sequences=k if verifier else 1, outer_seq_len=answer, outer_supervised=mass.answer_max_new_tokens,
            **lora),
        "generator policy update": policy_chunk_memory(
            shape, sequences=min(mass.micro_batch_size or m * mass.meta_batch_size, m * mass.meta_batch_size),
            seq_len=practice, supervised=mass.practice_max_new_tokens, checkpointing=mass.gradient_checkpointing,
            **lora),
        "solver policy update": policy_chunk_memory(
            shape, sequences=min(mass.micro_batch_size or k * mass.meta_batch_size, k * mass.meta_batch_size),
            seq_len=answer, supervised=mass.answer_max_new_tokens, checkpointing=mass.gradient_checkpointing, **lora),
    }
    estimates = {name: MemoryEstimate({**weights.parts, **phase.parts}) for name, phase in phases.items()}
    return {**estimates, "peak": max(estimates.values(), key=lambda e: e.total)}
