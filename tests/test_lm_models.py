"""The LM model layer: tiny Llama pretraining and save/load, the eager-attention guard, LoRA
meta-gradients against finite differences (float64), and SmolLM2-135M loaded offline."""

from __future__ import annotations

import resource

import pytest
import torch
from torch import Tensor
from transformers import LlamaForCausalLM

from mass_ref import inner_adapt
from mass_ref.lm import (
    EXACT_EAGER,
    inner_adapt_lora,
    add_lora,
    build_tiny_lm,
    load_lm,
    load_smollm2,
    lora_parameters,
    pretrain_lm,
    require_eager_attention,
    save_lm,
    sft_batch,
    sft_losses_per_example,
    use_exact_float64,
)

CORPUS = [f"Question: What is {a} + {b}?\nAnswer: {a + b}" for a in range(12) for b in range(12)]
SUPPORT = [("Question: What is 3 + 4?\nAnswer:", " 7"), ("Question: What is 10 + 1?\nAnswer:", " 11"),
           ("Question: What is 2 + 9?\nAnswer:", " 11")]
QUERY = [("Question: What is 5 + 6?\nAnswer:", " 11"), ("Question: What is 7 + 0?\nAnswer:", " 7")]


def test_pretraining_lowers_the_loss_and_is_reproducible_by_seed(tokenizer) -> None:
    histories = []
    for _ in range(2):
        model = build_tiny_lm(tokenizer, hidden_size=32, layers=2, heads=2, seed=0)
        histories.append(pretrain_lm(model, tokenizer, CORPUS, steps=40, batch_size=8, lr=3e-3, seed=1, progress=False))
    assert histories[0] == histories[1]
    assert sum(histories[0][-5:]) / 5 < 0.5 * histories[0][0]
    assert not model.training


def test_tiny_lm_save_and_load_gives_identical_logits_and_eager_attention(tokenizer, tmp_path) -> None:
    model = build_tiny_lm(tokenizer, hidden_size=32, layers=2, heads=2, seed=3)
    again = build_tiny_lm(tokenizer, hidden_size=32, layers=2, heads=2, seed=3)
    assert torch.equal(model.model.embed_tokens.weight, again.model.embed_tokens.weight)  # seeded init
    save_lm(model, tokenizer, tmp_path)
    loaded, loaded_tokenizer = load_lm(tmp_path)
    assert isinstance(loaded, LlamaForCausalLM) and loaded.config._attn_implementation == "eager"
    batch = sft_batch(loaded_tokenizer, SUPPORT)
    assert torch.equal(batch.input_ids, sft_batch(tokenizer, SUPPORT).input_ids)
    with torch.no_grad():
        expected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        got = loaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(expected, got)


def test_sdpa_is_refused_for_second_order_gradients_with_a_message_naming_eager(tokenizer) -> None:
    model = build_tiny_lm(tokenizer, hidden_size=16, layers=1, heads=2, seed=0)
    require_eager_attention(model)  # eager passes
    model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match='attn_implementation="eager"'):
        require_eager_attention(model)
    lora_model = add_lora(model, r=2, seed=0)
    batch = sft_batch(tokenizer, SUPPORT)
    with pytest.raises(ValueError, match="eager"):
        inner_adapt_lora(lora_model, batch, inner_lr=0.1)
    inner_adapt_lora(lora_model, batch, inner_lr=0.1, first_order=True)  # first order needs no double backward
    # Why: the CPU SDPA kernel has no double backward (true on torch 2.13; revisit if this changes).
    adapted = inner_adapt(lora_model, sft_losses_per_example, batch, inner_lr=0.1, backend="torch.func",
                          params=lora_parameters(lora_model))
    with pytest.raises(RuntimeError, match="derivative for .*scaled_dot_product.* is not implemented"):
        sft_losses_per_example(adapted, batch).mean().backward()


def test_higher_refuses_a_peft_wrapped_tiny_lm_and_names_torch_func(tokenizer) -> None:
    model = add_lora(build_tiny_lm(tokenizer, hidden_size=16, layers=1, heads=2, seed=0), r=2, seed=0)
    with pytest.raises(ValueError, match="torch.func"):
        inner_adapt(model, sft_losses_per_example, sft_batch(tokenizer, SUPPORT), inner_lr=0.1, backend="higher")


def lora_tiny_lm(tokenizer):
    """A float64 tiny Llama with LoRA on q/v whose B matrices are random (so second-order terms act)."""
    model = add_lora(build_tiny_lm(tokenizer, hidden_size=16, layers=2, heads=2, seed=0, dtype=torch.float64),
                     r=2, alpha=4, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lora_parameters(model).items():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def test_lora_meta_gradient_matches_central_finite_differences_in_float64(tokenizer) -> None:
    model = lora_tiny_lm(tokenizer)
    lora = lora_parameters(model)
    assert lora and all(p.dtype == torch.float64 for p in lora.values())
    assert {n.split(".")[-3] for n in lora} == {"lora_A", "lora_B"}
    support, query = sft_batch(tokenizer, SUPPORT), sft_batch(tokenizer, QUERY)
    g = torch.Generator().manual_seed(2)
    direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in lora.items()}
    weights0 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)

    def outer(weights: Tensor, params: dict[str, Tensor], num_steps: int) -> Tensor:
        adapted = inner_adapt_lora(model, support, inner_lr=0.5, num_steps=num_steps, weights=weights, params=params)
        return sft_losses_per_example(adapted, query).mean()

    eps = 1e-5
    for num_steps in (1, 2):
        weights = weights0.clone().requires_grad_(True)
        loss = outer(weights, lora, num_steps)
        grads = torch.autograd.grad(loss, [weights, *lora.values()])
        dw, dtheta = grads[0], dict(zip(lora, grads[1:]))
        with torch.no_grad():
            fd_w = torch.stack([
                (outer(weights0 + eps * e, lora, num_steps) - outer(weights0 - eps * e, lora, num_steps)) / (2 * eps)
                for e in torch.eye(3, dtype=torch.float64)
            ])
        assert dw.abs().min() > 1e-4  # the weights matter (second-order terms are exercised)
        assert (dw - fd_w).norm() / fd_w.norm() <= 1e-6
        directional = sum((dtheta[n] * direction[n]).sum() for n in lora)
        with torch.no_grad():
            plus = outer(weights0, {n: p + eps * direction[n] for n, p in lora.items()}, num_steps)
            minus = outer(weights0, {n: p - eps * direction[n] for n, p in lora.items()}, num_steps)
        fd_dir = (plus - minus) / (2 * eps)
        assert abs(directional - fd_dir) / abs(fd_dir) <= 1e-6


def test_float64_tiny_lm_computes_in_float64_and_float32_is_unchanged(tokenizer) -> None:
    # Llama "upcasts" RMSNorm and softmax to float32, which rounds a float64 model to ~1e-7 and
    # would break the finite-difference check above; use_exact_float64 (applied by build_tiny_lm
    # and load_lm for float64) keeps float64, and changes nothing for float32.
    batch = sft_batch(tokenizer, SUPPORT)
    exact = build_tiny_lm(tokenizer, hidden_size=16, layers=2, heads=2, seed=0, dtype=torch.float64)
    assert exact.config._attn_implementation == EXACT_EAGER
    require_eager_attention(exact)
    stock = build_tiny_lm(tokenizer, hidden_size=16, layers=2, heads=2, seed=0).double()  # stock Llama code
    reference = build_tiny_lm(tokenizer, hidden_size=16, layers=2, heads=2, seed=0)
    converted = use_exact_float64(build_tiny_lm(tokenizer, hidden_size=16, layers=2, heads=2, seed=0))
    with torch.no_grad():
        logits = {name: m(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                  for name, m in [("exact", exact), ("stock", stock), ("ref", reference), ("conv", converted)]}
    assert (logits["exact"] - logits["stock"]).abs().max() > 1e-9  # stock float64 is float32-accurate only
    assert (logits["exact"] - logits["ref"].double()).abs().max() < 1e-4
    assert torch.equal(logits["ref"], logits["conv"])


@pytest.fixture(scope="module")
def smollm2_loads(tmp_path_factory):
    cache = tmp_path_factory.mktemp("smollm2")
    converted = load_smollm2(cache)
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    cached = load_smollm2(cache)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}  # the second call only read the cache
    return converted, cached


@pytest.mark.slow  # converts SmolLM2-135M (the fixture): ~20 s
def test_smollm2_converts_once_reloads_identically_and_gives_lora_meta_gradients(smollm2_loads) -> None:
    (model, tokenizer), (cached, cached_tokenizer) = smollm2_loads
    for m in (model, cached):
        assert isinstance(m, LlamaForCausalLM) and m.config._attn_implementation == "eager"
        assert 134.4e6 < sum(p.numel() for p in m.parameters()) < 134.6e6
    prompt = "What is 12 + 7?"
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    assert cached_tokenizer(prompt, add_special_tokens=False).input_ids == ids[0].tolist()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, cached(input_ids=ids).logits)
    del model
    lora_model = add_lora(cached, r=8, seed=0)
    batch = sft_batch(cached_tokenizer, [("What is 3 + 4? Answer:", " 7"), ("What is 10 + 11? Answer:", " 21")])
    weights = torch.full((2,), 0.5, requires_grad=True)
    lora = lora_parameters(lora_model)
    adapted = inner_adapt_lora(lora_model, batch, inner_lr=1e-2, weights=weights)
    loss = sft_losses_per_example(adapted, batch).mean()
    grads = torch.autograd.grad(loss, [weights, *lora.values()])
    assert torch.isfinite(loss) and grads[0].abs().min() > 0
    assert sum(g.abs().sum() for g in grads[1:]) > 0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 4 * 1024**2  # peak RSS (KiB) < 4 GiB
