"""The meta-gradient modes on the real thing: a peft-LoRA tiny Llama in float64, 2 inner steps."""

from __future__ import annotations

import pytest
import torch

from mass_ref.lm import PLAIN, TinyLMSpec, add_lora, lora_parameters, pretrained_tiny_lm, sft_batch, \
    sft_losses_per_example, task_problems, use_exact_float64
from mass_ref.metagrad import weight_meta_gradient
from mass_ref.profiles import SMOKE_TINY_LM

SPEC = TinyLMSpec(**SMOKE_TINY_LM)


@pytest.fixture(scope="module")
def lora64(smoke_tiny_lm_cache):
    model, tokenizer, _ = pretrained_tiny_lm(SPEC, smoke_tiny_lm_cache, progress=False)
    model = add_lora(use_exact_float64(model.double()), r=2, alpha=4, target_modules=("q_proj", "v_proj", "up_proj"))
    with torch.no_grad():  # B = 0 would zero the gradients of A: make every path carry gradient
        for name, p in lora_parameters(model).items():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    problems = task_problems(SPEC, 4, split="train", seed=5)
    pairs = [PLAIN.solve_pair(p.question, p.solution) for p in problems]
    support, query = sft_batch(tokenizer, pairs[:3], add_bos=True), sft_batch(tokenizer, pairs[3:], add_bos=True)
    return model, support, query


@pytest.mark.parametrize("mode", ["checkpointed", "forward_over_reverse"])
def test_lora_meta_gradients_of_the_memory_saving_modes_equal_the_unroll(lora64, mode: str) -> None:
    model, support, query = lora64
    call = dict(weights=torch.full((3,), 1 / 3, dtype=torch.float64), inner_lr=1.0, num_steps=2,
                params={n: t.detach() for n, t in lora_parameters(model).items()})
    outer = lambda forward: sft_losses_per_example(forward, query).sum()  # noqa: E731
    ref = weight_meta_gradient(model, sft_losses_per_example, support, outer, mode="unroll", **call)
    got = weight_meta_gradient(model, sft_losses_per_example, support, outer, mode=mode, **call)
    assert ref.weights.abs().max() > 1e-6  # a non-trivial check
    assert ((got.weights - ref.weights).norm() / ref.weights.norm()).item() <= 1e-6
    worst = max(((got.params[n] - ref.params[n]).norm() / ref.params[n].norm()).item() for n in ref.params)
    assert worst <= 1e-6
