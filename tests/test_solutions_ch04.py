"""The worked solutions of chapter 4's exercises agree with the package."""

from __future__ import annotations

import torch

from mass_ref.lm import (inner_adapt_lora, add_lora, build_tiny_lm, lora_parameters, sft_batch, sft_losses_per_example,
                         token_losses_to_example_means, train_tokenizer)
from solutions.ch04 import answer_token_loss, one_step_attributions

CORPUS = [f"Question: What is {a} + {b}?\nAnswer: {a + b}" for a in range(12) for b in range(12)]
SUPPORT = [("Question: What is 3 + 4?\nAnswer:", " 7"), ("Question: What is 10 + 1?\nAnswer:", " 11"),
           ("Question: What is 2 + 9?\nAnswer:", " 11")]
GOLD = [("Question: What is 5 + 6?\nAnswer:", " 11")]


def test_answer_token_loss_matches_the_package() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[:, :3] = -100
    labels[1, 5:] = -100  # padding at the end of one row
    assert torch.allclose(answer_token_loss(logits, labels), token_losses_to_example_means(logits, labels), atol=1e-12)


def test_one_step_attributions_match_autograd_through_adapt_lora() -> None:
    tokenizer = train_tokenizer(CORPUS, vocab_size=280)
    model = add_lora(build_tiny_lm(tokenizer, hidden_size=16, layers=1, heads=2, seed=0, dtype=torch.float64),
                     r=2, alpha=4, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lora_parameters(model).items():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    batch, gold = sft_batch(tokenizer, SUPPORT), sft_batch(tokenizer, GOLD)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64, requires_grad=True)
    adapted = inner_adapt_lora(model, batch, inner_lr=0.5, weights=weights)
    (exact,) = torch.autograd.grad(sft_losses_per_example(adapted, gold).sum(), weights)
    mine = one_step_attributions(model, batch, gold, 0.5, weights.detach())
    assert exact.abs().min() > 1e-6
    assert torch.allclose(mine, exact, rtol=1e-9, atol=1e-12)
