"""Test-time training: only LoRA moves, it is restored bit for bit, weights count, accuracy loop,
and a smoke run of the SFT-step vs meta-step timing."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch

from mass_ref.lm import add_lora, build_tiny_lm, lora_parameters, pretrain_lm, sft_batch, sft_losses_per_example
from mass_ref.lm.generate import accuracy, generate_answers
from mass_ref.lm.timing import time_sft_and_meta_step
from mass_ref.lm.ttt import adapted_lora, lora_sft_steps, ttt_accuracy

CORPUS = [f"Question: What is {a} + {b}?\nAnswer: {a + b}" for a in range(12) for b in range(12)]
A = ("Question: What is 3 + 4?\nAnswer:", " 7")
B = ("Question: What is 10 + 1?\nAnswer:", " 11")
B_OTHER = ("Question: What is 10 + 2?\nAnswer:", " 99")  # same token lengths as B
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Sum:
    a: int
    b: int
    answer: int


def prompt(p: Sum) -> str:
    return f"Question: What is {p.a} + {p.b}?\nAnswer:"


@pytest.fixture(scope="module")
def pretrained(tokenizer):
    m = build_tiny_lm(tokenizer, hidden_size=32, layers=2, heads=2, seed=0)
    pretrain_lm(m, tokenizer, CORPUS, steps=60, batch_size=8, lr=1e-2, seed=0, progress=False)
    return m


@pytest.fixture
def model(pretrained):
    """A fresh LoRA wrapper (r=4 on q/v) around a copy of the pretrained tiny LM."""
    return add_lora(copy.deepcopy(pretrained), r=4, alpha=8, seed=0)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def logits(model, tokenizer) -> torch.Tensor:
    batch = sft_batch(tokenizer, [A, B])
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def test_adapted_lora_changes_the_model_inside_and_restores_lora_bitwise_after(model, tokenizer) -> None:
    before, logits_before = snapshot(model), logits(model, tokenizer)
    lora = set(lora_parameters(model))
    with adapted_lora(model, tokenizer, [A, B], num_steps=2, lr=1e-2) as losses:
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
        inside = snapshot(model)
        assert (logits(model, tokenizer) - logits_before).abs().max() > 1e-3  # the output changed
    assert any(not torch.equal(inside[n], before[n]) for n in lora)
    assert all(torch.equal(inside[n], before[n]) for n in before if n not in lora)  # base weights untouched
    after = snapshot(model)
    assert all(torch.equal(after[n], before[n]) for n in before)  # bitwise
    assert all(p.grad is None for p in model.parameters())  # no optimiser leftovers
    assert torch.equal(logits(model, tokenizer), logits_before)


def test_adapted_lora_restores_even_when_the_block_raises(model, tokenizer) -> None:
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with adapted_lora(model, tokenizer, [A], num_steps=1, lr=1e-2, optimizer="sgd"):
            raise RuntimeError("boom")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_few_steps_on_one_example_lower_its_loss(model, tokenizer) -> None:
    batch = sft_batch(tokenizer, [B_OTHER])
    with torch.no_grad():
        start = sft_losses_per_example(model, batch).item()
    losses = lora_sft_steps(model, tokenizer, [B_OTHER], num_steps=5, lr=1e-2)
    with torch.no_grad():
        end = sft_losses_per_example(model, batch).item()
    assert losses[0] == pytest.approx(start, rel=1e-6)
    assert end < 0.8 * start  # " 99" is nowhere in the corpus, so it starts unlikely


def test_an_sgd_step_follows_the_weighted_sum_of_per_example_gradients(model, tokenizer) -> None:
    lora = lora_parameters(model)
    with torch.no_grad():  # a nonzero B so that both A and B matrices get gradients
        for name, p in lora.items():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    start = {n: p.detach().clone() for n, p in lora.items()}
    batch = sft_batch(tokenizer, [A, B])
    per_example = sft_losses_per_example(model, batch)
    grads = [torch.autograd.grad(per_example[i], list(lora.values()), retain_graph=True) for i in range(2)]
    for weights, w in ((None, (0.5, 0.5)), ([0.8, 0.2], (0.8, 0.2))):  # default: uniform 1/m
        with adapted_lora(model, tokenizer, [A, B], num_steps=1, lr=0.1, optimizer="sgd", weights=weights):
            for (name, p), g0, g1 in zip(lora.items(), *grads):
                torch.testing.assert_close(p, start[name] - 0.1 * (w[0] * g0 + w[1] * g1), atol=1e-7, rtol=1e-5)


def test_a_zero_weight_example_is_ignored(model, tokenizer) -> None:
    lora = lora_parameters(model)
    results = []
    for examples, weights in (([A, B], [1.0, 0.0]), ([A, B_OTHER], [1.0, 0.0]), ([A, B], None)):
        with adapted_lora(model, tokenizer, examples, num_steps=2, lr=1e-2, weights=weights):
            results.append({n: p.detach().clone() for n, p in lora.items()})
    alone = {n: p.detach().clone() for n, p in lora.items()}
    lora_sft_steps(model, tokenizer, [A], num_steps=2, lr=1e-2)
    for n, p in lora.items():
        torch.testing.assert_close(results[0][n], p, atol=1e-6, rtol=1e-5)  # = training on A alone
        torch.testing.assert_close(results[1][n], results[0][n], atol=1e-6, rtol=1e-5)  # B's content is irrelevant
    assert any((results[2][n] - results[0][n]).abs().max() > 1e-4 for n in lora)  # with B weighted, it differs
    assert any(not torch.equal(alone[n], p) for n, p in lora.items())


def test_bad_arguments_are_refused_with_clear_messages(pretrained, model, tokenizer) -> None:
    with pytest.raises(ValueError, match="add_lora"):
        lora_sft_steps(pretrained, tokenizer, [A], num_steps=1, lr=1e-2)
    with pytest.raises(ValueError, match="optimizer"):
        lora_sft_steps(model, tokenizer, [A], num_steps=1, lr=1e-2, optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        lora_sft_steps(model, tokenizer, [A, B], num_steps=1, lr=1e-2, weights=[1.0])


def test_ttt_accuracy_answers_each_problem_with_its_own_adapter_and_discards_it(pretrained, tokenizer,
                                                                               monkeypatch) -> None:
    # q/v adapters barely move this tiny LM's answers (its logits are small: tied embeddings of small
    # norm and a frozen final norm), so adapt every linear layer here.
    model = add_lora(copy.deepcopy(pretrained), r=8, alpha=16, seed=0, target_modules=ALL_LINEAR)
    problems = [Sum(3, 4, 7), Sum(10, 1, 11), Sum(5, 5, 10)]
    odd = {p: [(prompt(p), f" {p.answer + 80}")] for p in problems}  # teach a wrong answer per problem
    before = snapshot(model)
    odd_loss = lambda p: sft_losses_per_example(model, sft_batch(tokenizer, odd[p])).item()  # noqa: E731
    with torch.no_grad():
        base_odd_loss = {p: odd_loss(p) for p in problems}
    seen = []  # (problem's taught-answer loss, answer) at the moment each problem is answered

    def recording_generate(m, tok, prompts, **kwargs):
        (answer,) = generate_answers(m, tok, prompts, **kwargs)
        problem = next(p for p in problems if prompt(p) == prompts[0])
        with torch.no_grad():
            seen.append((problem, odd_loss(problem), answer))
        return [answer]

    base_acc, base = accuracy(model, tokenizer, problems, prompt_fn=prompt, max_new_tokens=4)
    assert ttt_accuracy(model, tokenizer, problems, lambda p: [], num_steps=3, lr=1e-2, prompt_fn=prompt,
                        max_new_tokens=4) == (base_acc, base)  # no examples: the base model answers
    monkeypatch.setattr("mass_ref.lm.ttt.generate_answers", recording_generate)
    acc, per_problem = ttt_accuracy(model, tokenizer, problems, odd.__getitem__, num_steps=40, lr=1e-2,
                                    prompt_fn=prompt, max_new_tokens=4, gold_fn=lambda p: p.answer + 80)
    assert [p for p, _, _ in seen] == problems
    for problem, loss, _ in seen:  # each problem was answered while adapted to its own example...
        assert loss < 0.8 * base_odd_loss[problem]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # ...which was then discarded
    assert per_problem == [a.strip() == str(p.answer + 80) for p, _, a in seen]
    assert acc == sum(per_problem) / 3 and acc > 0  # some taught answers were given (none without TTT)
    assert not any(accuracy(model, tokenizer, problems, prompt_fn=prompt, max_new_tokens=4,
                            gold_fn=lambda p: p.answer + 80)[1])
    seen.clear()
    zero = ttt_accuracy(model, tokenizer, problems, odd.__getitem__, num_steps=2, lr=1e-2, prompt_fn=prompt,
                        max_new_tokens=4, weights_for=lambda p, ex: [0.0], gold_fn=lambda p: p.answer + 80)
    assert zero == (0.0, [False] * 3)  # zero weight: no update
    assert [loss for _, loss, _ in seen] == pytest.approx([base_odd_loss[p] for p in problems], rel=1e-6)


def test_timing_core_returns_positive_finite_times_and_leaves_lora_unchanged(model, tokenizer) -> None:
    before = snapshot(model)
    result = time_sft_and_meta_step(model, sft_batch(tokenizer, [A, B, B_OTHER]), sft_batch(tokenizer, [A]),
                                    num_steps=(1, 2), repeats=1)
    times = [result["sft_step_s"], *result["meta_step_s"].values()]
    assert set(result["meta_step_s"]) == {"1", "2"} and all(math.isfinite(t) and t > 0 for t in times)
    ratio = result["meta_step_over_sft_step_time_ratio"]
    assert math.isfinite(ratio) and ratio > 0 and ratio == result["ratio"]["1"]
    assert result["m"] == 3 and result["tokens"] > 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
