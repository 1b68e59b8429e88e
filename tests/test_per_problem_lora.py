"""Per-problem LoRA batching (mass_ref/lm/per_problem_lora.py) against one problem at a time.

The reference is the in-place test-time update of mass_ref/lm/ttt.py (``lora_sft_steps`` under
``restored_lora``) and the plain peft model with a problem's adapted tensors written into it.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mass_ref.lm import PLAIN, TinyLMSpec, add_lora, lora_parameters, pretrained_tiny_lm, random_practice, task_problems
from mass_ref.lm.per_problem_lora import per_problem_lora, sgd_per_problem, stack_lora
from mass_ref.lm.sft import SFTBatch, sft_batch, sft_losses_per_example
from mass_ref.lm.ttt import lora_sft_steps, restored_lora
from mass_ref.profiles import SMOKE_TINY_LM

SPEC = TinyLMSpec(**SMOKE_TINY_LM)


@pytest.fixture(scope="module")
def lora_model(smoke_tiny_lm_cache):
    """The smoke tiny LM with LoRA on q and v whose B is not zero (so A moves in a step too)."""
    model, tokenizer, _ = pretrained_tiny_lm(SPEC, smoke_tiny_lm_cache, progress=False)
    model = add_lora(model, r=2, alpha=4, seed=0)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, p in lora_parameters(model).items():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    return model, tokenizer


def _practice(n_each):
    pool = task_problems(SPEC, 40, split="train", seed=3)
    sets = random_practice(pool, PLAIN, len(n_each), m=max(n_each), seed=0)
    return [ex[:n] for ex, n in zip(sets, n_each)]


@pytest.mark.parametrize("num_steps", [1, 2])
def test_one_batched_update_is_each_problems_own_sgd_update(lora_model, num_steps) -> None:
    model, tokenizer = lora_model
    practice = _practice([2, 3, 1])
    weights = [[0.2, 0.9], [0.5, 0.0, 1.5], [1.0]]
    before = {name: p.detach().clone() for name, p in lora_parameters(model).items()}
    batch = sft_batch(tokenizer, [pair for ex in practice for pair in ex], add_bos=True)
    rows = [p for p, ex in enumerate(practice) for _ in ex]
    flat = torch.tensor([w for ws in weights for w in ws])
    for w, expected_weights in ((flat, weights), (None, [None] * 3)):
        stacked = sgd_per_problem(model, batch, rows, num_problems=3, num_steps=num_steps, lr=0.5, weights=w)
        for p, ex in enumerate(practice):
            with restored_lora(model) as lora:
                lora_sft_steps(model, tokenizer, ex, num_steps=num_steps, lr=0.5, optimizer="sgd",
                               weights=expected_weights[p], add_bos=True)
                for name, t in lora.items():
                    torch.testing.assert_close(stacked[name][p], t, rtol=1e-5, atol=1e-7)
                    assert not torch.equal(t, before[name])  # B ≠ 0: every tensor moves, A too
    for name, p in lora_parameters(model).items():  # the model's own tensors never moved
        assert torch.equal(p, before[name])


def test_each_row_runs_with_its_own_problems_lora_state(lora_model) -> None:
    model, tokenizer = lora_model
    lora = lora_parameters(model)
    states = [{name: t.detach() + 0.1 * k * torch.ones_like(t) for name, t in lora.items()} for k in range(3)]
    gold = sft_batch(tokenizer, [PLAIN.solve_pair(p.question, p.solution)
                                 for p in task_problems(SPEC, 4, split="test", seed=5)], add_bos=True)
    rows = [2, 0, 1, 2]
    with per_problem_lora(model) as per_row, torch.no_grad():
        per_row.use(stack_lora(states), rows)
        batched = sft_losses_per_example(model, gold)
    golds = [_row(gold, b) for b in range(len(rows))]
    with torch.no_grad():
        alone = []
        for b, p in enumerate(rows):
            with restored_lora(model) as tensors:
                for name, t in tensors.items():
                    t.copy_(states[p][name])
                alone.append(sft_losses_per_example(model, golds[b]))
        plain = torch.cat([sft_losses_per_example(model, g) for g in golds])
        after = sft_losses_per_example(model, gold)  # the hooks are gone after the block: the plain model again
    torch.testing.assert_close(batched, torch.cat(alone), rtol=1e-5, atol=1e-6)
    assert len(set(batched.tolist())) == 4  # the states differ enough to give four different losses
    torch.testing.assert_close(after, plain, rtol=1e-5, atol=1e-6)


def _row(batch: SFTBatch, b: int) -> SFTBatch:
    """Row b of ``batch`` alone, its padding cut."""
    n = int(batch.attention_mask[b].sum())
    return SFTBatch(batch.input_ids[b:b + 1, :n], batch.attention_mask[b:b + 1, :n], batch.labels[b:b + 1, :n])


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # LoRA on the tied embedding, on purpose
def test_bad_rows_and_states_are_refused_with_the_fix(lora_model, smoke_tiny_lm_cache) -> None:
    model, tokenizer = lora_model
    practice = _practice([2, 1])
    batch = sft_batch(tokenizer, [pair for ex in practice for pair in ex], add_bos=True)
    with pytest.raises(ValueError, match="one problem index per example"):
        sgd_per_problem(model, batch, [0, 1], num_problems=2, num_steps=1, lr=0.5)
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        sgd_per_problem(model, batch, [0, 0, 2], num_problems=2, num_steps=1, lr=0.5)
    with pytest.raises(ValueError, match="one weight per example"):
        sgd_per_problem(model, batch, [0, 0, 1], num_problems=2, num_steps=1, lr=0.5, weights=torch.ones(2))
    lora = lora_parameters(model)
    with per_problem_lora(model) as per_row:
        with pytest.raises(ValueError, match="lacks"):
            per_row.use({}, [0])
        per_row.use(stack_lora([lora]), [0])
        with pytest.raises(ValueError, match="one problem index per batch row"), torch.no_grad():
            sft_losses_per_example(model, batch)  # 3 rows, rows for 1
    plain, _, _ = pretrained_tiny_lm(SPEC, smoke_tiny_lm_cache, progress=False)
    with pytest.raises(ValueError, match="no trainable LoRA"), per_problem_lora(plain):
        pass
    embedded = add_lora(copy.deepcopy(plain), r=2, alpha=4, target_modules=("embed_tokens", "q_proj"), seed=0)
    with pytest.raises(ValueError, match="linear layers only"), per_problem_lora(embedded):
        pass
