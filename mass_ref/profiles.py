"""Run profiles: one switch (``MASS_PROFILE``) that sizes every notebook and script.

* ``smoke``: seconds per notebook; what CI runs. Numbers are not meaningful.
* ``cpu``: the committed results; minutes per notebook on a 2-core laptop CPU.
* ``gpu``: the papers' full budgets; for a CUDA machine.
* ``auto``: ``gpu`` when CUDA is available, else ``cpu``. Within ``gpu``, chapter 7 picks its config by
  the card's memory (:meth:`MassGpuSizes.config_for_card`).

Every notebook's sizes are defined here, once, as a frozen dataclass per notebook; a notebook's
parameters cell reads them with :func:`profile_sizes` and may override any field.

Introduced in notebooks/01_maml_sine.ipynb.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

PROFILES = ("smoke", "cpu", "gpu")
ENV_VAR = "MASS_PROFILE"


def resolve_profile(profile: str | None = None) -> str:
    """Return the concrete profile name: ``profile``, else ``$MASS_PROFILE``, else ``auto``.

    ``auto`` becomes ``gpu`` when ``torch.cuda.is_available()`` and ``cpu`` otherwise. A ``gpu``
    read from ``$MASS_PROFILE`` on a machine without CUDA is refused (:func:`check_profile_fits_machine`):
    a CPU run of a GPU budget would take days. An explicit ``profile="gpu"`` argument only names the
    sizes (e.g. to print the gpu config on a laptop) and is not checked.
    """
    name = profile if profile is not None else os.environ.get(ENV_VAR, "auto")
    name = name.strip().lower()
    if name == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PROFILES:
        raise ValueError(
            f"unknown profile {name!r} (from {'argument' if profile is not None else '$' + ENV_VAR}); "
            f"choose one of {PROFILES + ('auto',)}, e.g. MASS_PROFILE=smoke."
        )
    if profile is None:
        check_profile_fits_machine(name)
    return name


def check_profile_fits_machine(profile: str) -> None:
    """Raise ``ValueError`` when ``profile`` is ``gpu`` and this machine has no CUDA device."""
    if profile == "gpu" and not torch.cuda.is_available():
        raise ValueError("MASS_PROFILE=gpu needs a CUDA GPU and this machine has none (torch.cuda.is_available() "
                         "is False); use MASS_PROFILE=cpu (minutes per chapter) or smoke (seconds), or auto.")


LARGE_CARD_GIB = 60.0
"""Cards with at least this much memory (80 GB: A100-80GB, H100) run chapter 7's full config, whose predicted
peak is 41.3 GiB (bf16; :mod:`mass_ref.lm.memory`, docs/scaling.md) and would leave a 40/48 GB card no headroom;
smaller cards (a 16 GB T4 up to a 48 GB L40S) run the small-card config (12.2 GiB predicted, fp32)."""


def cuda_memory_gib(device: int | None = None) -> float | None:
    """Total memory of the CUDA device (the current one by default) in GiB; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device() if device is None else device
    return torch.cuda.get_device_properties(index).total_memory / 2**30


@dataclass(frozen=True)
class MamlSineSizes:
    """Sizes for notebooks/01_maml_sine.ipynb (MAML, Finn et al. 2017, §5.1).

    Attributes:
        meta_iterations: outer (Adam) steps for MAML and for first-order MAML.
        meta_batch_size: tasks per outer step (paper: 25).
        baseline_iterations: Adam steps for the pretrained baseline and for the oracle.
        n_eval_tasks: held-out tasks for the evaluation curves and the learning curve (>= 100, for tight CIs).
        n_query: query points per held-out task on which MSE is measured.
        timing_repeats: meta-gradients timed per method for the speed comparison.
        outer_lr: Adam's (peak) step size for MAML and first-order MAML (paper: 1e-3).
        lr_schedule: ``"constant"`` (paper) or ``"cosine"`` (decays ``outer_lr`` to 0 over ``meta_iterations``).
        curve_points: held-out evaluations during meta-training (the learning curve), besides the one at step 0.
    """

    meta_iterations: int
    meta_batch_size: int
    baseline_iterations: int
    n_eval_tasks: int
    n_query: int
    timing_repeats: int
    outer_lr: float = 1e-3
    lr_schedule: str = "constant"
    curve_points: int = 10


@dataclass(frozen=True)
class AttributionSizes:
    """Sizes for notebooks/02_metagradients_through_data.ipynb (attribution and distillation).

    Attributes:
        meta_iterations: Adam steps of MAML that train the learner whose data we attribute.
        n_tasks: held-out tasks for the leave-one-out and first-order comparisons.
        n_fd_tasks: tasks whose attributions are checked by finite differences.
        n_corruption_tasks: tasks with corrupted labels for the harmful-data detection.
        n_distill_tasks: tasks whose synthetic examples are learned (all at once, with vmap).
        distill_iterations: Adam steps on the synthetic examples.
        n_query: query points per task on which losses are measured.
    """

    meta_iterations: int
    n_tasks: int
    n_fd_tasks: int
    n_corruption_tasks: int
    n_distill_tasks: int
    distill_iterations: int
    n_query: int


@dataclass(frozen=True)
class MassToySizes:
    """Sizes for notebooks/03_mass_toy.ipynb (MASS in miniature).

    Attributes:
        base_iterations: MAML steps that pretrain the learner (the "base model").
        labeler_iterations: Adam steps that pretrain the generator's own labeller.
        meta_steps: MASS meta-steps per meta-training run.
        meta_batch_size: problems per meta-step.
        n_eval_problems: held-out problems per seed (the issue asks for >= 200).
        n_seeds: independent meta-training runs per method (the issue asks for >= 3).
        checkpoint_every: meta-steps between checkpoints.
    """

    base_iterations: int
    labeler_iterations: int
    meta_steps: int
    meta_batch_size: int
    n_eval_problems: int
    n_seeds: int
    checkpoint_every: int


SMOKE_TINY_LM: dict[str, Any] = dict(n_train_problems=300, vocab_size=400, hidden_size=32, layers=1, heads=2,
                                     steps=30, batch_size=16)
"""The smoke profile's tiny LM (``mass_ref.lm.TinyLMSpec`` fields): seconds to pretrain, answers nothing."""
CPU_TINY_LM: dict[str, Any] = {}
"""The cpu/gpu tiny LM: ``TinyLMSpec()`` defaults (1.1M parameters, 1,500 steps, ≈ 6 min on 2 cores)."""


@dataclass(frozen=True)
class LMTestTimeSizes:
    """Sizes for notebooks/04_lm_test_time_training.ipynb (LoRA test-time training).

    Attributes:
        tiny_lm: ``TinyLMSpec`` fields (the model is pretrained once and cached).
        n_test_problems: held-out problems in the naive-TTT comparison.
        num_examples: m examples per test-time update.
        inner_lrs: SGD step sizes compared for the test-time update.
    """

    tiny_lm: dict[str, Any]
    n_test_problems: int
    num_examples: int
    inner_lrs: tuple[float, ...]


@dataclass(frozen=True)
class MassLLMSizes:
    """Sizes for notebooks/05_mass_llm.ipynb (MASS on language models).

    Attributes:
        tiny_lm: ``TinyLMSpec`` fields (shared with notebook 04's cache).
        meta_steps: meta-training steps per run (the paper: about 100); the cpu runs ship with the package.
        live_meta_steps: a short MASS_gold run trained live in the notebook, to watch it learn.
        meta_batch_size: training problems per meta-step.
        num_synthetic: m in meta-training (paper: 12). num_inner_steps: K in meta-training (paper: 2).
            Chapter 5 trains with the test-time budget (m = 6, K = 1), so no train/test mismatch.
        num_test_examples: m at test time (paper: 6); one inner step at test time.
        n_eval_problems: held-out problems per seed. n_seeds: runs per method.
        smollm2_meta_steps: SmolLM2-135M meta-training steps (0: only the untrained methods are evaluated).
        smollm2_n_eval_problems, smollm2_seeds: its evaluation (0 problems: the SmolLM2 section is skipped).
        checkpoint_every: meta-steps between checkpoints.
    """

    tiny_lm: dict[str, Any]
    meta_steps: int
    live_meta_steps: int
    meta_batch_size: int
    num_synthetic: int
    num_inner_steps: int
    num_test_examples: int
    n_eval_problems: int
    n_seeds: int
    smollm2_meta_steps: int
    smollm2_n_eval_problems: int
    smollm2_seeds: int
    checkpoint_every: int


@dataclass(frozen=True)
class ScalableMetaGradSizes:
    """Sizes for notebooks/06_scalable_metagradients.ipynb (meta-gradients that fit in memory).

    Attributes:
        exact_steps: K values of the float64 exactness and cosine checks.
        cost_steps: K values of the time/memory curves. cost_modes: the modes measured.
        cost_m: support examples per meta-gradient. seq_lens: tokens per example of the length curve (at K = 4,
            or the largest K below it).
        smollm2_live: measure SmolLM2-135M here (True) or read the committed benchmark file (False: on 2 CPU
            cores its unrolled K = 4 needs 20 GB and minutes per row).
        acc_meta_steps, acc_meta_batch_size, acc_num_synthetic: MASS_gold meta-training (K = 2) run once with the
            exact and once with the first-order meta-gradient. acc_n_eval: held-out problems. acc_seeds: runs each.
    """

    exact_steps: tuple[int, ...]
    cost_steps: tuple[int, ...]
    cost_modes: tuple[str, ...]
    cost_m: int
    seq_lens: tuple[int, ...]
    smollm2_live: bool
    acc_meta_steps: int
    acc_meta_batch_size: int
    acc_num_synthetic: int
    acc_n_eval: int
    acc_seeds: int


@dataclass(frozen=True)
class MassGpuSizes:
    """Sizes for notebooks/07_mass_gpu.ipynb: a run config file (relative to the repository root).

    Attributes:
        config: the YAML config the notebook trains and evaluates, as ``python -m mass_ref`` would. smoke and cpu:
            ``configs/lm_mass_gpu_smoke.yaml`` (the gpu code path on the tiny LM and offline GSM8K-format data);
            gpu: ``configs/lm_mass_gpu.yaml`` (Qwen2.5-0.5B-Instruct on GSM8K, the paper's budget).
        small_card_config: the config for a card under :data:`LARGE_CARD_GIB` (gpu profile:
            ``configs/lm_mass_gpu_t4.yaml``); None: ``config`` on every machine.
    """

    config: str
    small_card_config: str | None = None

    def config_for_card(self, memory_gib: float | None) -> str:
        """The config for a card of ``memory_gib`` (:func:`cuda_memory_gib`; None: no card, ``config``)."""
        if self.small_card_config is not None and memory_gib is not None and memory_gib < LARGE_CARD_GIB:
            return self.small_card_config
        return self.config


_COST_MODES = ("unroll", "checkpointed", "forward_over_reverse", "first_order")

_SIZES: dict[str, dict[str, Any]] = {
    "01_maml_sine": {
        "smoke": MamlSineSizes(300, 10, 300, 100, 50, 3, lr_schedule="cosine", curve_points=3),
        "cpu": MamlSineSizes(24_000, 25, 12_000, 300, 100, 20),
        "gpu": MamlSineSizes(70_000, 25, 70_000, 1_000, 100, 50),
    },
    "02_metagradients_through_data": {
        "smoke": AttributionSizes(300, 20, 2, 30, 20, 50, 50),
        "cpu": AttributionSizes(12_000, 500, 10, 1_000, 500, 1_000, 100),
        "gpu": AttributionSizes(40_000, 1_000, 20, 2_000, 1_000, 2_000, 100),
    },
    "03_mass_toy": {
        "smoke": MassToySizes(300, 300, 10, 8, 50, 3, 5),
        "cpu": MassToySizes(12_000, 3_000, 600, 32, 300, 3, 100),
        "gpu": MassToySizes(70_000, 10_000, 5_000, 64, 1_000, 5, 500),
    },
    "04_lm_test_time_training": {
        "smoke": LMTestTimeSizes(SMOKE_TINY_LM, 8, 3, (1.0,)),
        "cpu": LMTestTimeSizes(CPU_TINY_LM, 100, 6, (0.3, 1.0, 3.0)),
        "gpu": LMTestTimeSizes(CPU_TINY_LM, 500, 6, (0.3, 1.0, 3.0)),
    },
    "05_mass_llm": {
        "smoke": MassLLMSizes(SMOKE_TINY_LM, 2, 2, 2, 3, 1, 3, 4, 2, 0, 0, 1, 1),
        "cpu": MassLLMSizes(CPU_TINY_LM, 100, 10, 4, 6, 1, 6, 240, 3, 0, 8, 1, 10),
        "gpu": MassLLMSizes(CPU_TINY_LM, 100, 10, 8, 6, 1, 6, 500, 5, 100, 200, 3, 10),
    },
    "06_scalable_metagradients": {
        "smoke": ScalableMetaGradSizes((1, 2), (1, 2), ("unroll", "checkpointed"), 4, (48,), False, 1, 2, 3, 3, 1),
        "cpu": ScalableMetaGradSizes((1, 2, 4, 8), (1, 2, 4, 8), _COST_MODES, 12, (64, 128, 256), False, 16, 4, 12,
                                     80, 1),
        "gpu": ScalableMetaGradSizes((1, 2, 4, 8), (1, 2, 4, 8), _COST_MODES, 12, (64, 128, 256), True, 100, 8,
                                     12, 500, 3),
    },
    "07_mass_gpu": {
        "smoke": MassGpuSizes("configs/lm_mass_gpu_smoke.yaml"),
        "cpu": MassGpuSizes("configs/lm_mass_gpu_smoke.yaml"),
        "gpu": MassGpuSizes("configs/lm_mass_gpu.yaml", "configs/lm_mass_gpu_t4.yaml"),
    },
}


def profile_sizes(notebook: str, profile: str | None = None) -> Any:
    """The sizes dataclass of ``notebook`` (its file stem) for ``profile`` (resolved as above)."""
    if notebook not in _SIZES:
        raise ValueError(f"no sizes defined for notebook {notebook!r}; known: {sorted(_SIZES)}.")
    return _SIZES[notebook][resolve_profile(profile)]


RUNTIME_MINUTES: dict[str, dict[str, float | None]] = {
    # measured on 2 CPU cores (smoke, cpu: the runtime the results JSON records); gpu: None, not yet measured
    "01_maml_sine": {"smoke": 0.2, "cpu": 1.6, "gpu": None},
    "02_metagradients_through_data": {"smoke": 0.2, "cpu": 0.9, "gpu": None},
    "03_mass_toy": {"smoke": 0.3, "cpu": 1.3, "gpu": None},
    "04_lm_test_time_training": {"smoke": 0.3, "cpu": 1.6, "gpu": None},
    "05_mass_llm": {"smoke": 1.0, "cpu": 14.0, "gpu": None},
    "06_scalable_metagradients": {"smoke": 1.0, "cpu": 4.0, "gpu": None},
    "07_mass_gpu": {"smoke": 0.3, "cpu": 0.2, "gpu": None},
}
"""Minutes a notebook takes per profile where it was measured (a test keeps the cpu figures within a factor 2 of
the committed results' ``runtime_seconds``)."""


def runtime_estimate(notebook: str, profile: str | None = None) -> str:
    """How long ``notebook`` takes in ``profile`` on this kind of machine, as a sentence for its parameters cell."""
    profile = resolve_profile(profile)
    minutes = RUNTIME_MINUTES.get(notebook, {}).get(profile)
    if minutes is None:
        return (f"{notebook} in the {profile} profile: runtime not yet measured (no GPU was available to us); "
                "the first run records it in results/.")
    cores = os.cpu_count() or 1
    where = "2 CPU cores" if profile != "gpu" else "a GPU"
    note = "" if profile == "gpu" or cores <= 2 else f" (this machine has {cores} cores: expect less)"
    return f"{notebook} in the {profile} profile takes about {minutes:g} min on {where}{note}."
