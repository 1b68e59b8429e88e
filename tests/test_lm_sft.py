"""SFT batches: labels masked by position (pad = eos), the per-example loss by hand, left padding."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from mass_ref.lm import IGNORE_INDEX, build_tiny_lm, collate_sft, left_pad_prompts, sft_batch, sft_losses_per_example
from mass_ref.lm import token_losses_to_example_means, train_tokenizer

CORPUS = [f"Question: What is {a} + {b}?\nAnswer: {a + b}" for a in range(12) for b in range(12)]
PAIRS = [("Question: What is 3 + 4?\nAnswer:", " 7"), ("Q: 10 + 11?\nA:", " 21"),
         ("Question: What is 100 + 2?\nAnswer:", " 102")]


def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=280)


def test_collate_supervises_exactly_the_answer_and_one_eos_when_pad_equals_eos() -> None:
    eos = 2
    prompts, answers = [[5, 6, 7], [8], [9, 10]], [[11, 12], [13, 14, 15, 16], [eos, 17]]  # an answer may contain eos
    batch = collate_sft(prompts, answers, pad_token_id=eos, eos_token_id=eos)
    assert batch.input_ids.shape == (3, 6)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        end = len(p) + len(a) + 1
        assert batch.input_ids[i, :end].tolist() == p + a + [eos]
        assert batch.input_ids[i, end:].eq(eos).all()  # padding is eos too...
        assert batch.attention_mask[i].tolist() == [1] * end + [0] * (6 - end)
        supervised = (batch.labels[i] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert supervised == list(range(len(p), end))  # ...yet only the answer and its own eos count
        assert batch.labels[i, supervised].tolist() == a + [eos]
    assert batch.num_supervised().tolist() == [3, 5, 3]


def test_sft_batch_masks_prompts_by_their_token_length_and_can_prepend_bos() -> None:
    tok = tokenizer()
    for add_bos in (False, True):
        batch = sft_batch(tok, PAIRS, add_bos=add_bos)
        for i, (prompt, answer) in enumerate(PAIRS):
            p = tok(prompt, add_special_tokens=False).input_ids
            a = tok(answer, add_special_tokens=False).input_ids
            start = len(p) + add_bos
            assert batch.input_ids[i, 0].item() == (tok.bos_token_id if add_bos else p[0])
            kept = batch.labels[i][batch.labels[i] != IGNORE_INDEX].tolist()
            assert kept == a + [tok.eos_token_id]
            assert (batch.labels[i, :start] == IGNORE_INDEX).all() and batch.labels[i, start] == a[0]


def test_per_example_loss_equals_a_hand_computation() -> None:
    batch = collate_sft([[3, 4, 5], [6], [7, 8]], [[9], [10, 11, 12], [13, 14]], pad_token_id=0, eos_token_id=2)
    logits = torch.randn(*batch.input_ids.shape, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    asked = []

    def forward(*, logits_to_keep, **kwargs):  # a causal LM's head applied at the kept positions only
        asked.append(logits_to_keep.tolist())
        return SimpleNamespace(logits=logits[:, logits_to_keep])

    expected = []
    for i in range(3):
        terms = [
            -torch.log_softmax(logits[i, t - 1], -1)[batch.labels[i, t]]
            for t in range(1, batch.input_ids.shape[1])
            if batch.labels[i, t] != IGNORE_INDEX
        ]
        expected.append(torch.stack(terms).mean())
    assert torch.allclose(sft_losses_per_example(forward, batch), torch.stack(expected), atol=1e-12, rtol=0)
    supervised_next = (batch.labels[:, 1:] != IGNORE_INDEX).any(0)
    assert asked == [supervised_next.nonzero().flatten().tolist()]  # logits only where some answer is scored


def test_answer_only_logits_give_the_full_logits_loss_and_gradient_bit_for_bit() -> None:
    tok = tokenizer()
    model = build_tiny_lm(tok, hidden_size=16, layers=1, heads=2, seed=0, dtype=torch.float64)
    batch = sft_batch(tok, PAIRS)
    params = [p for p in model.parameters()]
    kept = sft_losses_per_example(model, batch)
    full = token_losses_to_example_means(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                                         batch.labels)
    assert torch.equal(kept, full)
    for a, b in zip(torch.autograd.grad(kept.sum(), params), torch.autograd.grad(full.sum(), params)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


def test_right_padding_does_not_change_an_examples_loss_in_a_real_model() -> None:
    tok = tokenizer()
    model = build_tiny_lm(tok, hidden_size=16, layers=1, heads=2, seed=0, dtype=torch.float64)
    together = sft_losses_per_example(model, sft_batch(tok, PAIRS))
    alone = torch.cat([sft_losses_per_example(model, sft_batch(tok, [pair])) for pair in PAIRS])
    assert torch.allclose(together, alone, atol=1e-12, rtol=0)


def test_left_padding_aligns_every_prompt_to_the_last_column() -> None:
    tok = tokenizer()
    prompts = [p for p, _ in PAIRS]
    input_ids, attention_mask = left_pad_prompts(tok, prompts, add_bos=True)
    for i, prompt in enumerate(prompts):
        ids = [tok.bos_token_id] + tok(prompt, add_special_tokens=False).input_ids
        width = input_ids.shape[1]
        assert input_ids[i, width - len(ids) :].tolist() == ids
        assert attention_mask[i].tolist() == [0] * (width - len(ids)) + [1] * len(ids)
        assert input_ids[i, : width - len(ids)].eq(tok.pad_token_id).all()
