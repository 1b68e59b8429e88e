"""Answering: greedy decoding against a hand-written loop, left padding, sampling, accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from mass_ref.lm import add_lora, build_tiny_lm, pretrain_lm
from mass_ref.lm.generate import accuracy, generate_answers, sample_answers

CORPUS = [f"Question: What is {a} + {b}?\nAnswer: {a + b}" for a in range(12) for b in range(12)]
FACTS = {"Q: 3 + 4?\nA:": " 7", "Q: 10 + 11?\nA:": " 21", "Q: 2 + 9?\nA:": " 11"}
PROMPTS = ["Q: 3 + 4?\nA:", "Question: What is 5", "Q: 10 + 11?\nA:", "Q", "Answer: 1", "Q: 2 + 9?\nA:"]


@dataclass(frozen=True)
class Fact:
    question: str
    answer: int


@pytest.fixture(scope="module")
def model(tokenizer):
    """A tiny Llama pretrained on the arithmetic corpus: confident, non-trivial continuations."""
    m = build_tiny_lm(tokenizer, hidden_size=32, layers=2, heads=2, seed=0)
    pretrain_lm(m, tokenizer, CORPUS, steps=60, batch_size=8, lr=1e-2, seed=0, progress=False)
    return m


@pytest.fixture(scope="module")
def overfit(tokenizer):
    """A tiny Llama that has memorised the three FACTS (prompt + answer + eos)."""
    m = build_tiny_lm(tokenizer, hidden_size=32, layers=2, heads=2, seed=0)
    pretrain_lm(m, tokenizer, [p + a for p, a in FACTS.items()], steps=80, batch_size=6, lr=1e-2, seed=0,
                progress=False)
    return m


def greedy_by_hand(model, tokenizer, prompt: str, max_new_tokens: int, bos: bool = False) -> str:
    """argmax of the last position's logits, appended one token at a time, no cache, no padding."""
    ids = [tokenizer.bos_token_id] * bos + tokenizer(prompt, add_special_tokens=False).input_ids
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
            token = int(logits.argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_greedy_decoding_equals_a_hand_written_greedy_loop_and_is_deterministic(model, tokenizer) -> None:
    expected = [greedy_by_hand(model, tokenizer, p, 10) for p in PROMPTS]
    got = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=4)  # chunks of 4 and 2
    assert got == expected
    assert generate_answers(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=4) == got
    assert len(set(got)) > 2  # the model says different things to different prompts
    assert any(len(tokenizer(a, add_special_tokens=False).input_ids) == 10 for a in expected)  # cut by the limit
    assert any(len(tokenizer(a, add_special_tokens=False).input_ids) < 10 for a in expected)  # stopped at eos
    with_bos = [greedy_by_hand(model, tokenizer, p, 10, bos=True) for p in PROMPTS[:2]]
    assert generate_answers(model, tokenizer, PROMPTS[:2], max_new_tokens=10, add_bos=True) == with_bos


def test_left_padding_gives_the_same_continuation_as_decoding_each_prompt_alone(model, tokenizer) -> None:
    lengths = {len(tokenizer(p, add_special_tokens=False).input_ids) for p in PROMPTS}
    assert len(lengths) > 2  # the batch really is padded
    batched = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=len(PROMPTS))
    alone = [generate_answers(model, tokenizer, [p], max_new_tokens=10)[0] for p in PROMPTS]
    assert batched == alone


def test_a_fresh_lora_wrapper_answers_like_the_base_model_and_the_model_stays_in_train_mode(tokenizer) -> None:
    base = build_tiny_lm(tokenizer, hidden_size=32, layers=2, heads=2, seed=1)
    expected = generate_answers(base, tokenizer, PROMPTS, max_new_tokens=6)
    wrapped = add_lora(base, r=2, seed=0)  # B = 0: the same function
    wrapped.train()
    assert generate_answers(wrapped, tokenizer, PROMPTS, max_new_tokens=6) == expected
    assert wrapped.training  # the training flag is put back


def test_accuracy_counts_answers_that_match_the_gold(overfit, tokenizer) -> None:
    assert generate_answers(overfit, tokenizer, list(FACTS), max_new_tokens=5) == list(FACTS.values())
    problems = [Fact("3 + 4", 7), Fact("10 + 11", 21), Fact("2 + 9", 12)]  # the last gold disagrees with the model
    acc, per_problem = accuracy(overfit, tokenizer, problems, prompt_fn=lambda p: f"Q: {p.question}?\nA:",
                                max_new_tokens=5)
    assert per_problem == [True, True, False]
    assert acc == pytest.approx(2 / 3)
    records = [{"question": "3 + 4", "final_answer": "7"}, {"question": "2 + 9", "answer": "#### 11"}]
    assert accuracy(overfit, tokenizer, records, prompt_fn=lambda r: f"Q: {r['question']}?\nA:",
                    max_new_tokens=5) == (1.0, [True, True])


def test_sampling_is_reproducible_by_seed_leaves_the_global_rng_alone_and_cools_to_greedy(model, tokenizer) -> None:
    prompts = PROMPTS[:3]
    state = torch.get_rng_state()
    first = sample_answers(model, tokenizer, prompts, num_samples=4, temperature=1.5, max_new_tokens=8, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert [len(s) for s in first] == [4, 4, 4]
    assert sample_answers(model, tokenizer, prompts, num_samples=4, temperature=1.5, max_new_tokens=8, seed=3) == first
    other = sample_answers(model, tokenizer, prompts, num_samples=4, temperature=1.5, max_new_tokens=8, seed=4)
    assert other != first
    assert any(len(set(group)) > 1 for group in first)  # samples differ within a group
    cold = sample_answers(model, tokenizer, prompts, num_samples=2, temperature=1e-4, max_new_tokens=8, seed=0)
    greedy = generate_answers(model, tokenizer, prompts, max_new_tokens=8)
    assert cold == [[g, g] for g in greedy]
    with pytest.raises(ValueError, match="temperature"):
        sample_answers(model, tokenizer, prompts, num_samples=2, temperature=0.0, max_new_tokens=8, seed=0)


def test_the_models_own_generation_config_changes_nothing(model, tokenizer, capfd) -> None:
    """A hub model's generation_config (a repetition penalty, top_k, ...) must not leak into greedy answers or
    τ-samples, and overriding it prints no warning."""
    import copy
    import warnings

    plain = copy.deepcopy(model)
    opinionated = copy.deepcopy(model)
    config = opinionated.generation_config
    config.repetition_penalty, config.top_k, config.top_p, config.temperature = 5.0, 1, 0.5, 0.3
    config.do_sample, config.no_repeat_ngram_size, config.min_new_tokens = True, 1, 3
    config.suppress_tokens = [tokenizer(" 1", add_special_tokens=False).input_ids[-1]]
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for m in (opinionated, add_lora(copy.deepcopy(opinionated), r=2, seed=0)):  # peft reads the base's config
            greedy = generate_answers(m, tokenizer, PROMPTS, max_new_tokens=10, batch_size=4)
            samples = sample_answers(m, tokenizer, PROMPTS[:3], num_samples=4, temperature=1.5, max_new_tokens=8,
                                     seed=3)
            assert greedy == generate_answers(plain, tokenizer, PROMPTS, max_new_tokens=10, batch_size=4)
            assert samples == sample_answers(plain, tokenizer, PROMPTS[:3], num_samples=4, temperature=1.5,
                                             max_new_tokens=8, seed=3)
    assert opinionated.generation_config.repetition_penalty == 5.0  # the model's own config is put back
    assert [str(w.message) for w in caught if "generat" in str(w.message).lower()] == []
    assert "generat" not in capfd.readouterr().err.lower()
    # the settings above would change the answers if they were inherited
    with torch.no_grad():
        inherited = opinionated.generate(**dict(zip(("input_ids", "attention_mask"), _left_pad(tokenizer, PROMPTS))),
                                         max_new_tokens=10, pad_token_id=tokenizer.pad_token_id, do_sample=False)
    padded = _left_pad(tokenizer, PROMPTS)[0].shape[1]
    assert [tokenizer.decode(r[padded:], skip_special_tokens=True) for r in inherited.tolist()] != \
        generate_answers(plain, tokenizer, PROMPTS, max_new_tokens=10)


def _left_pad(tokenizer, prompts):
    from mass_ref.lm.sft import left_pad_prompts

    return left_pad_prompts(tokenizer, prompts, add_bos=False)


def test_problems_are_decoded_in_batches_with_the_answers_of_one_at_a_time(tmp_path, monkeypatch) -> None:
    """ttt_results decodes the no-update problems in left-padded batches, and the adapted ones in batches too, each
    row under its own problem's φ' (per_problem_lora): answers and correctness are those of decoding each problem
    alone, gold losses agree to float rounding."""
    import mass_ref.lm.evaluate as lm_evaluate
    from mass_ref.lm import PLAIN, TinyLMSpec, pretrained_tiny_lm, random_practice, task_problems

    spec = TinyLMSpec()  # the shipped tiny LM (the smoke one answers blanks): multi-line answers of varied length
    model, tok, _ = pretrained_tiny_lm(spec, tmp_path, progress=False)
    model = add_lora(model, r=2, alpha=4, seed=0)
    targets = task_problems(spec, 24, split="test", seed=1)
    examples = random_practice(task_problems(spec, 50, split="train", seed=3), PLAIN, len(targets), m=2, seed=0)
    examples = [ex if i % 4 == 0 else [] for i, ex in enumerate(examples)]  # 6 adapted, 18 not
    calls: list[tuple[list[str], list[str]]] = []

    def recording(m, t, prompts, **kwargs):
        answers = generate_answers(m, t, prompts, **kwargs)
        calls.append((list(prompts), answers))
        return answers

    monkeypatch.setattr(lm_evaluate, "generate_answers", recording)
    runs = {}
    for batch_size in (16, 1):
        calls.clear()
        result = lm_evaluate.ttt_results(model, tok, PLAIN, targets, examples, num_steps=1, inner_lr=1.0,
                                         max_new_tokens=48, batch_size=batch_size)
        runs[batch_size] = result, {p: a for prompts, answers in calls for p, a in zip(prompts, answers)}
        if batch_size == 16:
            assert [len(prompts) for prompts, _ in calls] == [16, 2, 6]  # 18 on φ in two batches, 6 on their own φ'
        else:
            assert [len(prompts) for prompts, _ in calls] == [1] * 24
    (batched, batched_answers), (alone, alone_answers) = runs[16], runs[1]
    assert batched_answers == alone_answers and len(set(batched_answers.values())) > 10
    assert batched[0] == alone[0]
    torch.testing.assert_close(torch.tensor(batched[1]), torch.tensor(alone[1]), rtol=1e-5, atol=1e-6)
