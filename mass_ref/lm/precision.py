"""Make a float64 Llama really compute in float64 (for finite-difference gradient checks).

``transformers``' Llama upcasts two operations to float32 for the sake of float16 models:

    RMSNorm(x) = g ⊙ x / sqrt(mean(x²) + ε)       computed as x.to(float32)
    softmax(q kᵀ / √d + mask)                       computed with dtype=float32

For a float64 model these "upcasts" are downcasts: every layer rounds to ~1e-7 relative, and a
central finite difference with step 1e-5 then carries errors of ~1e-2 — a float64 gradient check
fails although autograd is right. :func:`use_exact_float64` swaps in versions that compute in
``promote_types(dtype, float32)`` (float32 or wider: identical numbers for float32/16 models) and
selects the attention implementation ``"eager_exact"`` (eager attention, softmax in that dtype).

Introduced in notebooks/04_lm_test_time_training.ipynb.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask
from transformers.models.llama.modeling_llama import LlamaRMSNorm, repeat_kv

EXACT_EAGER = "eager_exact"
"""Eager attention whose softmax runs in float32 or the input dtype, whichever is wider."""


def _exact_eager_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """Llama's ``eager_attention_forward`` with softmax in ``promote_types(query.dtype, float32)``.

    Shapes: query ``[n, h, T, d]``, key/value ``[n, h_kv, T, d]`` → output ``[n, T, h, d]``.
    """
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    compute = torch.promote_types(query.dtype, torch.float32)
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=compute).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


AttentionInterface.register(EXACT_EAGER, _exact_eager_attention)
# The mask must be eager's additive float mask: an unregistered name gets SDPA's boolean mask,
# which `attn_weights + attention_mask` would silently add as +1 on every visible position.
AttentionMaskInterface.register(EXACT_EAGER, eager_mask)


class ExactRMSNorm(LlamaRMSNorm):
    """``LlamaRMSNorm`` computed in float32 or the input dtype, whichever is wider."""

    def forward(self, hidden_states: Tensor) -> Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.promote_types(input_dtype, torch.float32))
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


def use_exact_float64(model: nn.Module) -> nn.Module:
    """Switch a Llama-family model (or a peft wrapper of one) to dtype-preserving RMSNorm and attention.

    In place; returns ``model``. Float32 and float16 results are unchanged; float64 models then
    compute entirely in float64 (needed for finite-difference checks at relative error 1e-6).

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    for module in model.modules():
        if type(module) is LlamaRMSNorm:
            module.__class__ = ExactRMSNorm
    base = model
    while not hasattr(base, "set_attn_implementation") and hasattr(base, "get_base_model"):
        base = base.get_base_model()
    base.set_attn_implementation(EXACT_EAGER)
    return model
