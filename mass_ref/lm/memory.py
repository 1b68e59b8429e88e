"""What a phase of LM meta-training holds at its peak: a counting model, its measurement, layer checkpointing.

**The count.** For a Llama/Qwen2 block (eager attention, frozen base, LoRA rank r on ``targets``) autograd
saves, per token, when the residual stream carries a gradient (every layer after the first LoRA; h hidden,
i intermediate, a = heads·T attention scores per token of a length-T sequence):

    F_layer = (h+1) [RMSNorm in: x, rsqrt] + h [normed x, LoRA A's input] + r·|targets ∩ qkv|
            + 2h [q, repeated k] + a [softmax] + h [repeated v] + (h + r)·[o ∈ targets]
            + (h+1) [RMSNorm] + 3i [silu in, silu out, up] (+ h + r per gate/up target, i + r for down)

(the first layer's input has no gradient: no first RMSNorm, and only what its targets need). The head adds
(h+1) per token (final RMSNorm) and one *logits unit* U = S·V per sequence (S supervised positions,
``logits_to_keep``; the log-softmax that cross-entropy saves). A first-order forward + backward over c
sequences then peaks at the top of the backward, where ∂/∂log-softmax and ∂/∂logits join the saved ones:

    P_policy = c·[T·(Σ_layers F_layer + h + 1) + 3U]                                   (bytes: × precision's sizes)

With layer checkpointing each layer keeps only its input (h per token) and one layer is rebuilt at a time:

    P_policy,ckpt = c·[T·(L·h + h + 1) + max(3U, T·(F_layer + 2a + 3i))]

A second-order step (``create_graph=True``, the meta-gradient's Hessian-vector products) also keeps the
backward's own graph, B_layer = 10h + 6i + 2a + (|targets| + 1)·r per token, and 6U are alive at its peak.
**B_layer's coefficients and the 6U were read off** saved-tensor counts
(``torch.autograd.graph.saved_tensors_hooks``) on small Llamas with attention targets and one measured peak (m = 4, T = 64, S = 32), not derived op by op
(F_layer is; tests/test_memory.py checks it against the hooks exactly, and every peak against measurements). So

    P_step = m·[T·Σ(F + B) + T·(h+1) + 6U]                              (one inner step's graph: "checkpointed")
    P_unroll = K·m·[T·Σ(F + B) + T·(h+1) + 2U] + max(P_policy(outer batch), 4mU)  (K steps' graphs kept)

and "checkpointed" peaks at max(P_step, a trajectory step (P_policy + mU: ``torch.func.grad`` holds one more
unit), the outer gradient). In bf16 autocast the matmul activations take 2 bytes; the residual stream, the
RMSNorm statistics and the logits units (cross-entropy runs in fp32) 4; a score 6 (the fp32 softmax and its
bf16 copy). Weights: the base parameters, the LoRA tensors with their gradient and Adam's two moments (4×
fp32), and generation's KV cache 2·L·kv_dim·tokens per sequence. What the allocator and the framework add
on top (workspaces, fragmentation) is not modelled: docs/scaling.md compares the model with measurements.

Introduced for docs/scaling.md ("Memory model"); ``benchmarks/bench_memory_model.py`` prints measured vs
predicted.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["MemoryEstimate", "ModelShape", "generation_memory", "layer_checkpointing", "measure_peak_bytes",
           "meta_gradient_memory", "policy_chunk_memory", "weights_memory"]

QKV, MLP_IN = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")
BYTES = {"fp32": {"matmul": 4, "stream": 4, "scores": 4, "logits": 4},
         "bf16": {"matmul": 2, "stream": 4, "scores": 6, "logits": 4}}
"""Bytes per saved element by kind, per compute precision (module docstring)."""
SECOND_ORDER_UNITS = 6
"""Logits units alive at the peak of a Hessian-vector product (calibrated: module docstring)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted bytes of one phase, by named part. ``total`` sums them; ``gib`` is ``total`` in GiB."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def gib(self) -> float:
        return self.total / 2**30


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama/Qwen2 decoder that the count needs (:meth:`from_config` reads a transformers config)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = True

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> ModelShape:
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_attention_heads,
                   getattr(config, "num_key_value_heads", None) or config.num_attention_heads, config.vocab_size,
                   bool(getattr(config, "tie_word_embeddings", True)))

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``{target: (d_in, d_out)}`` of each linear layer of a block."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
                "up_proj": (h, i), "down_proj": (i, h)}

    def base_parameters(self) -> int:
        """Embedding (+ untied head), L blocks (linears + 2 norms), the final norm."""
        block = sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * block + self.hidden

    def lora_parameters(self, rank: int, targets: Sequence[str]) -> int:
        """r·(d_in + d_out) per target per layer."""
        return self.layers * sum(rank * sum(self.linear_shapes()[t]) for t in targets)


def _layer_counts(s: ModelShape, seq_len: int, rank: int, targets: Sequence[str],
                  stream_grad: bool) -> tuple[dict[str, int], bool]:
    """Elements per token one block saves (F_layer, by kind) and whether its output carries a gradient."""
    h, i, a = s.hidden, s.intermediate, s.heads * seq_len
    qkv = [t for t in QKV if t in targets]
    mlp_in = [t for t in MLP_IN if t in targets]
    q_grad, k_grad, v_grad = (stream_grad or t in targets for t in QKV)
    attn_grad = q_grad or k_grad or v_grad
    mid_grad = attn_grad or "o_proj" in targets
    up_grad, gate_grad = mid_grad or "up_proj" in targets, mid_grad or "gate_proj" in targets
    matmul = ((h if qkv else 0) + rank * len(qkv) + h * (k_grad + q_grad + (q_grad or k_grad))
              + (h + rank) * ("o_proj" in targets) + (h if mlp_in else 0) + rank * len(mlp_in)
              + i * (2 * gate_grad + up_grad) + (i + rank) * ("down_proj" in targets))
    stream = (h + 1) * (stream_grad + mid_grad)
    scores = a * (q_grad or k_grad or v_grad)
    return {"matmul": matmul, "stream": stream, "scores": scores}, mid_grad or up_grad or gate_grad


def _activation_bytes(s: ModelShape, seq_len: int, rank: int, targets: Sequence[str], precision: str,
                      *, second_order: bool = False) -> int:
    """Bytes per sequence of every block's saved tensors plus the final RMSNorm's (F, and B if second order)."""
    size, grad, total = BYTES[precision], False, 0
    for _ in range(s.layers):
        counts, grad = _layer_counts(s, seq_len, rank, targets, grad)
        total += sum(size[kind] * n for kind, n in counts.items())
        if second_order:  # B_layer, calibrated on saved-tensor counts (module docstring)
            total += size["matmul"] * (10 * s.hidden + 6 * s.intermediate + (len(targets) + 1) * rank)
            total += size["scores"] * 2 * s.heads * seq_len
    return seq_len * (total + size["stream"] * (s.hidden + 1))


def policy_chunk_memory(s: ModelShape, *, sequences: int, seq_len: int, supervised: int, rank: int,
                        targets: Sequence[str], precision: str = "fp32", checkpointing: bool = False) -> MemoryEstimate:
    """P_policy (or P_policy,ckpt): one first-order forward + backward over ``sequences`` of ``seq_len`` tokens."""
    size = BYTES[precision]
    logits = sequences * 3 * supervised * s.vocab * size["logits"]
    if not checkpointing:
        return MemoryEstimate({"activations": sequences * _activation_bytes(s, seq_len, rank, targets, precision),
                               "logits": logits})
    inputs = sequences * seq_len * size["stream"] * (s.layers * s.hidden + s.hidden + 1)
    one = ModelShape(s.hidden, s.intermediate, 1, s.heads, s.kv_heads, s.vocab, s.tied)
    counts, _ = _layer_counts(one, seq_len, rank, targets, True)
    layer = sum(size[kind] * n for kind, n in counts.items()) + size["scores"] * 2 * s.heads * seq_len \
        + size["matmul"] * 3 * s.intermediate
    return MemoryEstimate({"layer inputs": inputs, "logits or one layer": max(logits, sequences * seq_len * layer)})


def meta_gradient_memory(s: ModelShape, mode: str, *, m: int, seq_len: int, supervised: int, num_steps: int,
                         outer_sequences: int, outer_seq_len: int, outer_supervised: int, rank: int,
                         targets: Sequence[str], precision: str = "fp32") -> MemoryEstimate:
    """Peak of :func:`mass_ref.metagrad.weight_meta_gradient` over m support examples (module docstring).

    ``mode``: "unroll" (P_unroll) or "checkpointed" (P_step, the trajectory or the outer gradient, the largest);
    the outer batch is ``outer_sequences`` sequences of ``outer_seq_len`` tokens (the gold solution, or k answers).
    """
    size = BYTES[precision]
    units = m * supervised * s.vocab * size["logits"]  # m logits units
    graph = m * _activation_bytes(s, seq_len, rank, targets, precision, second_order=True)
    outer = policy_chunk_memory(s, sequences=outer_sequences, seq_len=outer_seq_len, supervised=outer_supervised,
                                rank=rank, targets=targets, precision=precision).total
    if mode == "unroll":
        return MemoryEstimate({"inner graphs": num_steps * (graph + 2 * units), "outer or backward": max(outer, 4 * units)})
    if mode != "checkpointed":
        raise ValueError(f"mode must be 'unroll' or 'checkpointed' (the modes the model counts); got {mode!r}.")
    first = policy_chunk_memory(s, sequences=m, seq_len=seq_len, supervised=supervised, rank=rank, targets=targets,
                                precision=precision).total + units  # torch.func.grad holds one more unit
    return MemoryEstimate({"one step's graph": max(graph + SECOND_ORDER_UNITS * units, first, outer)})


def weights_memory(s: ModelShape, *, rank: int, targets: Sequence[str], weight_bytes: int = 4) -> MemoryEstimate:
    """The base weights (``weight_bytes`` each) and the fp32 LoRA tensors with their gradient and Adam's moments."""
    return MemoryEstimate({"base": s.base_parameters() * weight_bytes,
                           "lora + grad + adam": 4 * 4 * s.lora_parameters(rank, targets)})


def generation_memory(s: ModelShape, *, sequences: int, tokens: int, precision: str = "fp32") -> MemoryEstimate:
    """The KV cache 2·L·kv_dim·tokens per sequence, and the last position's logits (V per sequence)."""
    size = BYTES[precision]
    return MemoryEstimate({"kv cache": sequences * 2 * s.layers * s.kv_dim * tokens * size["matmul"],
                           "logits": sequences * s.vocab * size["logits"]})


def _status_bytes(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}: CPU memory is measured on Linux only.")
    return int(match.group(1)) * 1024


def measure_peak_bytes(fn: Callable[[], Any], device: torch.device | str) -> int:
    """What ``fn()`` adds to memory at its peak, in bytes.

    CUDA: the allocator's peak (``reset_peak_memory_stats``, ``max_memory_allocated``) minus what was allocated
    before. CPU (Linux): the resident set's high-water mark ``VmHWM`` (reset by writing 5 to
    ``/proc/self/clear_refs``) minus the resident set before; run it in a fresh process with
    ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave the resident set (glibc returns mmapped blocks).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current resident set
    before = _status_bytes("VmRSS")
    fn()
    return _status_bytes("VmHWM") - before


@contextlib.contextmanager
def layer_checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, recompute each transformer layer in the backward pass instead of storing it.

    transformers' gradient checkpointing (non-reentrant ``torch.utils.checkpoint``), which acts only
    in train mode: the model is put in train mode for the block and restored after. Use it around
    first-order backward passes only: ``torch.func`` transforms (the differentiable inner loop)
    cannot run through ``torch.utils.checkpoint``, which is why it is not switched on for good.
    """
    if not enabled:
        yield
        return
    was_training = model.training
    base = next(m for m in model.modules() if isinstance(m, PreTrainedModel))
    had_input_hooks = bool(getattr(base, "_require_grads_hooks", None))
    new_api = hasattr(base, "activation_checkpointing_enable")  # transformers >= 5 renamed it
    non_reentrant = {"use_reentrant": False}
    if new_api:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=non_reentrant)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=non_reentrant)
    disable = base.activation_checkpointing_disable if new_api else base.gradient_checkpointing_disable
    model.train()
    try:
        yield
    finally:
        disable()
        if not had_input_hooks:  # enable() also hooks the embeddings' output, which torch.func cannot run through
            base.disable_input_require_grads()
        model.train(was_training)


