"""MASS on an LM: prompt formats, the scorer, the meta-step's gradients, resume, and the evaluation helpers.

A seconds-sized tiny arithmetic LM (the smoke spec) is pretrained once per module into tmp.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import mass_ref.lm.evaluate as lm_evaluate

from mass_ref.lm import (
    PLAIN,
    NUM_STATS,
    LMMassConfig,
    LMScorer,
    TinyLMSpec,
    inner_adapt_lora,
    add_lora,
    lm_meta_step,
    lora_parameters,
    PracticeSet,
    answer_agreement,
    pretrained_tiny_lm,
    pretraining_corpus,
    random_practice,
    related_practice,
    restored_lora,
    right_only,
    scorer_features,
    sft_batch,
    sft_losses_per_example,
    solver_grpo_step,
    task_problems,
    train_lm_mass,
    use_exact_float64,
)
from mass_ref.lm.formats import parse_practice, practice_prompt
from mass_ref.profiles import SMOKE_TINY_LM
from mass_ref.tasks.arithmetic import sample_arithmetic_problems, solve_question

SPEC = TinyLMSpec(**SMOKE_TINY_LM)
SMALL = LMMassConfig(num_synthetic=3, num_inner_steps=2, meta_batch_size=2, num_answers=2,
                     practice_max_new_tokens=30, answer_max_new_tokens=16)


@pytest.fixture(scope="module")
def pretrained(smoke_tiny_lm_cache):
    model, tokenizer, info = pretrained_tiny_lm(SPEC, smoke_tiny_lm_cache, progress=False)
    return model, tokenizer, info


@pytest.fixture()
def peft64(pretrained):
    """A fresh float64 (exact) copy of the tiny LM with LoRA, B made non-zero so every path has gradient."""
    import copy

    base = use_exact_float64(copy.deepcopy(pretrained[0]).double())
    model = add_lora(base, r=2, alpha=4, target_modules=("q_proj", "v_proj", "up_proj"), seed=0)
    with torch.no_grad():
        for name, p in lora_parameters(model).items():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model


def test_every_template_question_is_read_back_to_its_answer_and_skills() -> None:
    problems = sample_arithmetic_problems(2000, seed=11)
    assert all(solve_question(p.question) == (p.answer, p.skills) for p in problems)
    p = problems[0]
    assert solve_question(p.question.replace(str(p.start), "x", 1)) is None
    assert solve_question("Ava has 5 cards. Then Ava loses 9 of the cards. How many cards does Ava have now?") is None


def test_practice_completions_parse_back_into_solve_pairs() -> None:
    (p,) = sample_arithmetic_problems(1, seed=2)
    completion = f" {p.question}\nAnswer: {p.solution}"
    assert parse_practice(completion) == (p.question, p.solution)
    assert PLAIN.parse(completion) == PLAIN.solve_pair(p.question, p.solution)
    assert parse_practice(" no answer mark") is None and parse_practice(" q\nAnswer:   ") is None


@pytest.mark.parametrize(("solution", "share"), [
    ("3 - 2 = 1\n1 * 5 = 5\n#### 5", 1.0),                       # the tiny task's worked lines
    ("4 * 2 = 15\n15 - 7 = 8\n#### 8", 0.5),                      # one wrong step of two
    ("48/2 = <<48/2=24>>24 clips in May.\n#### 24", 1.0),         # GSM8K's calculator annotation
    ("2 * 3 + 4 = 10 and (2 + 3) × 4 = 21", 0.5),                # precedence, brackets, ×
    ("10 / 4 = 2.5, 10 / 4 = 2", 0.5),                           # exact, not integer, division
    ("7 / 0 = 1", 0.0),                                          # a division by zero is a wrong step
    ("She has 3 = 3 apples; x = 2 + 3\n#### 5", 0.0),            # no step to check
])
def test_equations_hold_checks_each_worked_step_exactly(solution: str, share: float) -> None:
    from mass_ref.lm import equations_hold

    assert equations_hold(solution) == share


def test_pretraining_corpus_pairs_practice_documents_by_skill_set() -> None:
    problems = sample_arithmetic_problems(300, seed=4, split="train")
    corpus = pretraining_corpus(problems, practice_fraction=1.0, seed=0)
    practice = [t for t in corpus if t.startswith("Problem: ")]
    assert len(corpus) == len(problems) + len(practice) and len(practice) > 250
    for text in practice[:50]:
        target = text[len("Problem: "):text.index("\nSimilar problem:")]
        related = parse_practice(text[len(practice_prompt(target)):])
        assert related is not None
        assert set(solve_question(target)[1]) == set(solve_question(related[0])[1])
    with pytest.raises(ValueError, match="practice_fraction"):
        pretraining_corpus(problems, practice_fraction=1.5)


def test_tiny_lm_cache_is_keyed_by_spec_and_reused(pretrained, tmp_path) -> None:
    _, _, info = pretrained
    assert TinyLMSpec(**info["spec"]) == SPEC and len(info["losses"]) == SPEC.steps
    assert info["loss_last"] < info["loss_first"]
    assert TinyLMSpec(steps=2).key() != TinyLMSpec(steps=3).key()
    with pytest.raises(ValueError, match="hidden_size"):
        TinyLMSpec(hidden_size=30, heads=4)


def test_scorer_starts_uniform_and_only_reranks_within_a_problem() -> None:
    scorer = LMScorer(8)
    features = torch.randn(5, 8 + NUM_STATS)
    assert torch.allclose(scorer(features), torch.full((5,), 1 / 5))  # untrained = TT-SS's weights
    with torch.no_grad():
        scorer.net[-1].weight.normal_(0, 1.0)
        scorer.stats.weight.fill_(-1.0)
        scorer.log_temperature.fill_(0.5)
        scorer.log_step_scale.fill_(-1.0)
    weights = scorer(features)
    # a ranking within the problem (softmax) times one global step-size multiplier c, reported on its own
    assert torch.all(weights > 0) and weights.sum().item() == pytest.approx(math.exp(-1.0))
    assert scorer.step_scale == pytest.approx(math.exp(-1.0))
    assert not torch.allclose(weights / weights.sum(), torch.full((5,), 1 / 5))
    torch.testing.assert_close(weights, scorer.step_scale * torch.softmax(scorer.logits(features), 0))
    # a problem's weights depend only on its own examples' logits, which are comparable across problems
    torch.testing.assert_close(scorer.logits(features[:2]), scorer.logits(features)[:2])
    with pytest.raises(ValueError, match=r"\[m, 12\]"):
        scorer(torch.randn(5, 8))


def test_scorer_without_hidden_states_ranks_by_the_statistics_alone() -> None:
    scorer = LMScorer(8, use_hidden_states=False)
    assert sum(p.numel() for p in scorer.parameters()) == 4 + 2  # b_η, log τ, log c
    features = torch.rand(4, 8 + NUM_STATS)
    assert torch.allclose(scorer(features), torch.full((4,), 1 / 4))  # untrained = TT-SS's weights
    with torch.no_grad():
        scorer.stats.weight.copy_(torch.tensor([[2.0, -1.0, 3.0, 0.5]]))
        scorer.log_temperature.fill_(-0.5)
    stats = features[:, 8:]
    torch.testing.assert_close(scorer.logits(features), (stats @ torch.tensor([2.0, -1.0, 3.0, 0.5])) / math.exp(-0.5))
    moved = features.clone()
    moved[:, :8] = torch.randn(4, 8)  # the hidden-state columns are ignored
    torch.testing.assert_close(scorer(moved), scorer(features))


def test_scorer_features_are_the_base_models_own_view_of_each_example(peft64, pretrained) -> None:
    tokenizer = pretrained[1]
    examples = [("Question: a\nAnswer:", " 1 + 2 = 3\n#### 3"), ("Question: bb\nAnswer:", " 4 * 5 = 22\n#### 22"),
                ("Question: c\nAnswer:", " #### 3")]
    before = scorer_features(peft64, tokenizer, examples, add_bos=True)
    with restored_lora(peft64) as lora, torch.no_grad():
        for p in lora.values():
            p.add_(1.0)
        after = scorer_features(peft64, tokenizer, examples, add_bos=True)
    hidden = peft64.config.hidden_size
    assert before.shape == (3, hidden + NUM_STATS) and torch.equal(before, after)  # the adapters do not move them
    with peft64.disable_adapter(), torch.no_grad():
        nll = sft_losses_per_example(peft64, sft_batch(tokenizer, examples, add_bos=True))
    # exp(−mean token NLL): the geometric-mean token probability
    torch.testing.assert_close(before[:, hidden].double(), (-nll).exp(), rtol=1e-5, atol=1e-6)
    assert torch.all(before[:, hidden + 1] <= before[:, hidden])  # the least likely token bounds the mean
    assert torch.all((before[:, hidden:] >= 0) & (before[:, hidden:] <= 1))  # all four statistics in [0, 1]
    assert answer_agreement([a for _, a in examples]) == [2 / 3, 1 / 3, 2 / 3]
    assert before[:, hidden + 2].tolist() == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    assert before[:, hidden + 3].tolist() == [1.0, 0.0, 0.0]  # its steps hold / 4 * 5 = 22 / no steps to check
    with_target = scorer_features(peft64, tokenizer, examples, add_bos=True, context="Problem: T\n")
    assert not torch.equal(with_target[:, :hidden], before[:, :hidden])


def test_right_only_weights_are_the_oracle_ceiling_of_the_same_examples() -> None:
    sets = [PracticeSet(["", "", "", ""], [("a", " 1"), ("b", " 2"), ("c", " 3"), ("d", " 4")], None,
                        [True, False, None, True]),
            PracticeSet(["", ""], [("a", " 1"), ("b", " 2")], None, [False, None])]
    examples, weights = right_only(sets)
    assert examples[0] == sets[0].examples and weights[0] == [0.5, 0.0, 0.0, 0.5]
    assert examples[1] == [] and weights[1] is None  # nothing right: the oracle does not update


def test_checked_only_keeps_the_attempts_whose_steps_all_hold_without_labels() -> None:
    from mass_ref.lm import checked_only, selection_rates

    sets = [PracticeSet(["", "", ""], [("q", " 2 * 3 = 6\n6 + 1 = 7\n#### 7"), ("q", " 2 * 3 = 6\n6 + 1 = 8\n#### 8"),
                                       ("q", " 2 * 3 = 6\n6 - 1 = 5\n#### 5")], None, [True, False, False]),
            PracticeSet(["", ""], [("q", " 4 * 2 = 15\n#### 15"), ("q", " #### 8")], None, [False, True])]
    examples, weights = checked_only(sets)
    assert examples[0] == sets[0].examples and weights[0] == [0.5, 0.0, 0.5]  # a right and a wrong one both hold
    assert examples[1] == [] and weights[1] is None  # nothing checks out: no update, whatever the labels say
    flipped = [dataclasses.replace(s, right=[not r for r in s.right]) for s in sets]
    assert checked_only(flipped) == (examples, weights)  # labels are never read
    assert selection_rates(sets)["checked"] == 0.5  # the first checked attempt is right in one set of two


@pytest.mark.parametrize("meta_gradient", ["unroll", "checkpointed"])
def test_verifier_samples_its_answers_at_the_meta_gradients_own_adapted_lora(peft64, pretrained, monkeypatch,
                                                                             meta_gradient) -> None:
    """MASS (verifier) samples y ~ π_φ' with φ' = the K differentiable steps' φ_K (no second inner loop), and φ
    is back bit for bit afterwards."""
    import mass_ref.lm.mass as lm_mass

    tokenizer = pretrained[1]
    config = dataclasses.replace(SMALL, outer_mode="verifier", train_generator=False,  # scorer None: uniform w
                                 practice="self", meta_gradient=meta_gradient, num_inner_steps=2, inner_lr=0.7)
    problems = task_problems(SPEC, 2, split="train", seed=7)
    completions = _fake_practice(problems, config.num_synthetic, "self")
    lora = lora_parameters(peft64)
    before = {n: t.detach().clone() for n, t in lora.items()}
    seen = []

    def fake_sample(model, tok, prompts, *, num_samples, **kwargs):
        if num_samples == config.num_synthetic:  # the practice completions
            return completions
        seen.append({n: t.detach().clone() for n, t in lora.items()})  # the answers: read φ as sampled from
        return [[" #### 1"] * num_samples]

    monkeypatch.setattr(lm_mass, "sample_answers", fake_sample)
    lm_meta_step(peft64, tokenizer, PLAIN, None, problems, config, {}, seed=3)
    assert len(seen) == len(problems)
    for problem, group, sampled in zip(problems, completions, seen):
        examples = [PLAIN.solve_pair(problem.question, c.strip()) for c in group]
        adapted = inner_adapt_lora(peft64, sft_batch(tokenizer, examples, add_bos=True), inner_lr=0.7, num_steps=2,
                             weights=torch.full((len(examples),), 1 / len(examples)))  # as lm_meta_step makes them
        for name in lora:
            torch.testing.assert_close(sampled[name], adapted.params[name].detach(), rtol=0, atol=1e-12)
    assert all(torch.equal(lora[n], before[n]) for n in lora)


def _fake_practice(problems, m, kind="related"):
    """Parseable practice completions, every other one with a wrong answer: related training problems, or
    solutions of the target itself."""
    wrong = lambda solution, i: solution if i % 2 else solution.replace("#### ", "#### 1")  # noqa: E731
    if kind == "self":
        return [[f" {wrong(p.solution, i)}" for i in range(m)] for p in problems]
    pool = task_problems(SPEC, 50, split="train", seed=8)
    return [[f" {q.question}\nAnswer: {wrong(q.solution, i)}"
             for i, q in enumerate(pool[b * m:(b + 1) * m])] for b in range(len(problems))]


@pytest.mark.parametrize(("meta_gradient", "practice"), [("unroll", "related"), ("checkpointed", "related"),
                                                         ("forward_over_reverse", "related"), ("unroll", "self")])
def test_scorer_gradient_of_the_meta_step_equals_the_direct_chain_rule(peft64, pretrained, monkeypatch,
                                                                        meta_gradient, practice) -> None:
    """lm_meta_step splits ∂L/∂η into ∂L/∂s (through the inner loop, any exact mode) then s.backward; rebuild it
    in one graph."""
    import mass_ref.lm.mass as lm_mass

    tokenizer = pretrained[1]
    config = dataclasses.replace(SMALL, train_generator=False, meta_gradient=meta_gradient, practice=practice)
    problems = task_problems(SPEC, 2, split="train", seed=7)
    completions = _fake_practice(problems, config.num_synthetic, practice)
    monkeypatch.setattr(lm_mass, "sample_answers", lambda *args, **kwargs: completions)
    torch.manual_seed(0)
    scorer = LMScorer(peft64.config.hidden_size).double()
    with torch.no_grad():
        scorer.net[-1].weight.normal_(0, 0.3)
        scorer.stats.weight.normal_(0, 0.3)
        scorer.log_step_scale.fill_(-0.2)
    optimizer = torch.optim.SGD(scorer.parameters(), lr=0.0)  # lr 0: η stays put; read its gradient
    grads = {}
    optimizer.step = lambda *a, **k: grads.update({n: p.grad.clone() for n, p in scorer.named_parameters()})
    lm_meta_step(peft64, tokenizer, PLAIN, scorer, problems, config, {"scorer": optimizer}, seed=3)
    total = 0.0
    for problem, group in zip(problems, completions):
        if practice == "self":
            examples = [PLAIN.solve_pair(problem.question, c.strip()) for c in group]
            context = ""
        else:
            examples, context = [PLAIN.parse(c) for c in group], f"Problem: {problem.question}\n"
        weights = scorer(scorer_features(peft64, tokenizer, examples, add_bos=True, context=context).double())
        adapted = inner_adapt_lora(peft64, sft_batch(tokenizer, examples, add_bos=True), inner_lr=config.inner_lr,
                             num_steps=config.num_inner_steps, weights=weights)
        gold = sft_batch(tokenizer, [PLAIN.solve_pair(problem.question, problem.solution)], add_bos=True)
        total = total + sft_losses_per_example(adapted, gold).mean() / len(problems)
    expected = torch.autograd.grad(total, list(scorer.parameters()))
    assert all(g.abs().max() > 0 for g in expected)
    for (name, _), g in zip(scorer.named_parameters(), expected):
        torch.testing.assert_close(grads[name], g, rtol=1e-9, atol=1e-14)


def test_generator_and_solver_steps_move_only_lora(pretrained) -> None:
    import copy

    model = add_lora(copy.deepcopy(pretrained[0]), r=2, alpha=4, seed=0)
    tokenizer = pretrained[1]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora0 = {n: p.detach().clone() for n, p in lora_parameters(model).items()}
    problems = task_problems(SPEC, 2, split="train", seed=9)
    opt = {"generator": torch.optim.Adam(list(lora_parameters(model).values()), lr=1e-2)}
    lm_meta_step(model, tokenizer, PLAIN, None, problems, dataclasses.replace(SMALL, train_scorer=False), opt, seed=1)
    solver_grpo_step(model, tokenizer, PLAIN, problems, dataclasses.replace(SMALL, method="solver_grpo"), opt, seed=1)
    assert any(not torch.equal(p, lora0[n]) for n, p in lora_parameters(model).items())
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if "lora_" not in n)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("outer_mode", ["gold", "verifier"])
def test_interrupted_training_resumes_to_the_same_final_state(pretrained, tmp_path, outer_mode) -> None:
    import copy

    config = dataclasses.replace(SMALL, outer_mode=outer_mode)

    def starting_models(lora_seed: int = 0):  # what a new process builds: nothing survives but the checkpoint
        model = add_lora(copy.deepcopy(pretrained[0]), r=2, alpha=4, seed=lora_seed)
        torch.manual_seed(0)
        return model, LMScorer(model.config.hidden_size)

    states = []
    for run, stops in (("straight", [None]), ("resumed", [1, None])):
        for stop in stops:
            model, scorer = starting_models()
            history = train_lm_mass(model, pretrained[1], PLAIN, scorer, config,
                                    lambda t: task_problems(SPEC, 2, split="train", seed=100 + t), steps=3, seed=4,
                                    checkpoint_path=tmp_path / f"{run}.pt", checkpoint_every=1, stop_after=stop,
                                    progress=False)
        states.append((history, {n: p.detach().clone() for n, p in lora_parameters(model).items()},
                       scorer.state_dict()))
    (h1, lora1, s1), (h2, lora2, s2) = states
    assert len(h1) == len(h2) == 3
    assert all(torch.equal(lora1[n], lora2[n]) for n in lora1)
    assert all(torch.equal(s1[n], s2[n]) for n in s1)
    model, scorer = starting_models()
    with pytest.raises(ValueError, match=r"written by another run: seed \(4 in the checkpoint, 5 here\)"):
        train_lm_mass(model, pretrained[1], PLAIN, scorer, config, lambda t: [], steps=3, seed=5,
                      checkpoint_path=tmp_path / "straight.pt", progress=False)
    other_model, scorer = starting_models(lora_seed=1)  # another initial LoRA: not the run that was checkpointed
    with pytest.raises(ValueError, match=r"another run: starting models \(fingerprint .* here\)\. Delete it"):
        train_lm_mass(other_model, pretrained[1], PLAIN, scorer, config, lambda t: [], steps=3, seed=4,
                      checkpoint_path=tmp_path / "straight.pt", progress=False)
    legacy = torch.load(tmp_path / "straight.pt", weights_only=False)  # written before fingerprints were kept
    del legacy["start"], legacy["step"]
    torch.save(legacy, tmp_path / "legacy.pt")
    model, scorer = starting_models()
    resumed = train_lm_mass(model, pretrained[1], PLAIN, scorer, config, lambda t: [], steps=3, seed=4,
                            checkpoint_path=tmp_path / "legacy.pt", progress=False)
    assert json.dumps(resumed) == json.dumps(h1)  # NaN-safe
    assert all(torch.equal(p, lora1[n]) for n, p in lora_parameters(model).items())  # restored, nothing run


def test_config_and_trainer_refuse_bad_values() -> None:
    for bad, match in ((dict(method="sft"), "method"), (dict(outer_mode="mse"), "outer_mode"),
                       (dict(num_synthetic=1), "num_synthetic"), (dict(inner_lr=0.0), "inner_lr"),
                       (dict(gamma_solve=-1.0), "gamma_solve"), (dict(train_generator=False, train_scorer=False),
                                                                  "nothing to meta-train"),
                       (dict(meta_gradient="adjoint"), "mode must be one of"),
                       (dict(meta_gradient="truncated", truncate=3), "truncate in 1..num_steps=2"),
                       (dict(meta_gradient="checkpointed", truncate=1), "only applies")):
        with pytest.raises(ValueError, match=match):
            LMMassConfig(**bad)


def test_practice_pools_and_gold_loss_without_examples(pretrained) -> None:
    import copy

    model = add_lora(copy.deepcopy(pretrained[0]), r=2, alpha=4, seed=0)
    tokenizer = pretrained[1]
    targets = task_problems(SPEC, 4, split="test", seed=1)
    related = related_practice(task_problems(SPEC, 400, split="test", seed=2), PLAIN, targets, m=3, seed=0)
    for target, examples in zip(targets, related):
        for prompt, _ in examples:
            question = prompt[len("Question: "):-len("\nAnswer:")]
            assert set(solve_question(question)[1]) == set(target.skills) and question != target.question
    assert len(random_practice(task_problems(SPEC, 10, split="train", seed=3), PLAIN, 4, m=3, seed=0)) == 4
    with pytest.raises(ValueError, match="fewer than m"):
        random_practice(targets, PLAIN, 2, m=5, seed=0)
    _, base = lm_evaluate.ttt_results(model, tokenizer, PLAIN, targets, None, num_steps=1, inner_lr=1.0,
                                            max_new_tokens=4)
    with torch.no_grad():
        direct = sft_losses_per_example(model, sft_batch(
            tokenizer, [PLAIN.solve_pair(p.question, p.solution) for p in targets], add_bos=True))
    torch.testing.assert_close(torch.tensor(base), direct, rtol=1e-5, atol=1e-6)


def test_evaluation_refuses_unfinished_training_before_any_work(pretrained, tmp_path, monkeypatch) -> None:
    import copy

    import mass_ref.lm.experiment as experiment

    model = add_lora(copy.deepcopy(pretrained[0]), r=2, alpha=4, seed=0)
    monkeypatch.setattr(experiment.ProblemSource, "test", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=r"mass_gold_seed0.pt holds 0/3 steps; train it first"):
        experiment.evaluate_lm_methods(model, pretrained[1], PLAIN, SMALL, SPEC, methods=["base", "mass_gold"], seed=0,
                                       steps=3, output_dir=tmp_path, n_problems=2, num_examples=2)
    with pytest.raises(ValueError, match="unknown method"):
        experiment.evaluate_lm_methods(model, pretrained[1], PLAIN, SMALL, SPEC, methods=["oracle"], seed=0, steps=3,
                                       output_dir=tmp_path, n_problems=2, num_examples=2)


def test_layer_checkpointing_keeps_gradients_and_leaves_the_inner_loop_working(peft64, pretrained) -> None:
    from mass_ref.lm import completion_logprobs, layer_checkpointing

    tokenizer = pretrained[1]
    params = list(lora_parameters(peft64).values())
    problems = task_problems(SPEC, 2, split="train", seed=3)

    def loss() -> torch.Tensor:
        return -completion_logprobs(peft64, tokenizer, PLAIN, [PLAIN.solve(p.question) for p in problems],
                                    [p.solution for p in problems], device=torch.device("cpu")).mean()

    peft64.eval()
    plain = torch.autograd.grad(loss(), params)
    with layer_checkpointing(peft64):
        assert peft64.training
        recomputed = torch.autograd.grad(loss(), params)
    assert not peft64.training
    for a, b in zip(plain, recomputed):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-13)
    batch = sft_batch(tokenizer, [PLAIN.solve_pair(p.question, p.solution) for p in problems], add_bos=True)
    adapted = inner_adapt_lora(peft64, batch, inner_lr=0.5, num_steps=1)  # torch.func: no checkpoint hooks left behind
    assert sft_losses_per_example(adapted, batch).shape == (2,)


def test_per_problem_seeds_make_each_problems_samples_independent_of_its_batch(pretrained) -> None:
    import copy

    import mass_ref.lm.mass as lm_mass

    model = add_lora(copy.deepcopy(pretrained[0]), r=2, alpha=4, seed=0)
    config = dataclasses.replace(SMALL, per_problem_seeds=True)
    prompts = [PLAIN.practice(p.question) for p in task_problems(SPEC, 3, split="train", seed=5)]
    options = dict(num_samples=3, max_new_tokens=12, config=config, seed=11, add_bos=True)
    whole = lm_mass._sample_groups(model, pretrained[1], prompts, first_index=0, **options)
    tail = lm_mass._sample_groups(model, pretrained[1], prompts[1:], first_index=1, **options)
    assert tail == whole[1:]


def test_one_update_gives_the_answers_of_ttt_accuracy_and_the_gold_loss_under_the_adapted_model(pretrained) -> None:
    import copy

    from mass_ref.lm import adapted_lora, ttt_accuracy

    model = add_lora(copy.deepcopy(pretrained[0]), r=2, alpha=4, seed=0)
    tokenizer = pretrained[1]
    targets = task_problems(SPEC, 3, split="test", seed=4)
    examples = random_practice(task_problems(SPEC, 10, split="train", seed=3), PLAIN, 3, m=2, seed=0)
    weights = [[0.25, 0.75], None, [1.0, 0.0]]
    correct, losses = lm_evaluate.ttt_results(model, tokenizer, PLAIN, targets, examples, num_steps=1, inner_lr=1.0,
                                                    max_new_tokens=16, weights=weights)
    _, expected = ttt_accuracy(model, tokenizer, [0, 1, 2], lambda i: examples[i], num_steps=1, lr=1.0, optimizer="sgd",
                               prompt_fn=lambda i: PLAIN.solve(targets[i].question), max_new_tokens=16,
                               gold_fn=lambda i: targets[i].answer, add_bos=True, weights_for=lambda i, ex: weights[i])
    assert correct == expected
    for target, ex, w, loss in zip(targets, examples, weights, losses):
        gold = sft_batch(tokenizer, [PLAIN.solve_pair(target.question, target.solution)], add_bos=True)
        with adapted_lora(model, tokenizer, ex, num_steps=1, lr=1.0, optimizer="sgd", weights=w, add_bos=True), \
                torch.no_grad():
            assert loss == pytest.approx(sft_losses_per_example(model, gold).item(), rel=1e-6)


def test_rows_on_one_lora_state_share_their_practice_and_the_oracle_skips_useless_sets(pretrained, tmp_path) -> None:
    import copy

    import mass_ref.lm.experiment as experiment

    model = add_lora(copy.deepcopy(pretrained[0]), r=2, alpha=4, seed=0)
    config = dataclasses.replace(SMALL, practice="self")
    rows = ["base", "tt_ss", "oracle_right_only"]
    out = experiment.evaluate_lm_methods(model, pretrained[1], PLAIN, config, SPEC, methods=rows, seed=0, steps=1,
                                         output_dir=tmp_path, n_problems=4, num_examples=3)
    assert list(out) == rows and out["tt_ss"]["sets"] is out["oracle_right_only"]["sets"]
    targets = task_problems(SPEC, 4, split="test", seed=20_000)  # evaluate_lm_methods' held-out problems, seed 0
    for i, s in enumerate(out["tt_ss"]["sets"]):
        assert s.examples and all(prompt == PLAIN.solve(targets[i].question) for prompt, _ in s.examples)
        if not any(s.right):  # nothing right: the oracle answers without an update, as the base model does
            assert out["oracle_right_only"]["correct"][i] == out["base"]["correct"][i]
            assert out["oracle_right_only"]["gold_loss"][i] == pytest.approx(out["base"]["gold_loss"][i])


def test_shipped_runs_are_used_only_for_the_same_model_config_seed_and_steps(pretrained, tmp_path) -> None:
    import copy

    import mass_ref.lm.experiment as experiment

    model = add_lora(copy.deepcopy(pretrained[0]), r=2, alpha=4, seed=0)
    config = dataclasses.replace(SMALL, practice="self", train_generator=False)
    shipped = tmp_path / "shipped"
    experiment.train_lm_methods(model, pretrained[1], PLAIN, config, SPEC, methods=["mass_gold"], seeds=[0], steps=1,
                                output_dir=shipped, progress=False)
    use = lambda out, **changes: experiment.use_shipped_runs(  # noqa: E731
        changes.pop("model", model), changes.pop("config", config), methods=["mass_gold"], seeds=[0],
        steps=changes.pop("steps", 1), output_dir=tmp_path / out, shipped_dir=shipped)
    assert use("other_steps", steps=2) == []
    assert use("other_config", config=dataclasses.replace(config, inner_lr=0.5)) == []
    other_model = add_lora(copy.deepcopy(pretrained[0]), r=2, alpha=4, seed=1)  # other initial LoRA
    assert use("other_model", model=other_model) == []
    assert use("same") == ["mass_gold_seed0.pt"]
    assert (tmp_path / "same" / "mass_gold_seed0.pt").read_bytes() == (shipped / "mass_gold_seed0.pt").read_bytes()
    assert use("same") == []  # never replaces a file that is there
    # a run from a version whose scorer read other statistics is named, with the fix, not a shape error
    from mass_ref.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(shipped / "mass_gold_seed0.pt")
    state["scorer"]["stats.weight"] = state["scorer"]["stats.weight"][:, :3]
    save_checkpoint(tmp_path / "old" / "mass_gold_seed0.pt", state)
    with pytest.raises(ValueError, match=r"mass_gold_seed0\.pt holds a scorer of 3 statistics.*Delete the file"):
        experiment.load_trained_state(model, tmp_path / "old", "mass_gold", 0, 1)
    with pytest.raises(ValueError, match=r"mass_gold_seed0\.pt holds 0/1 steps; train it first"):
        experiment.load_trained_state(model, tmp_path / "nothing", "mass_gold", 0, 1)


def test_practice_kind_is_checked_and_self_practice_is_the_target_itself() -> None:
    from mass_ref.lm import parse_practice_completion, practice_is_right, practice_prompt_for

    with pytest.raises(ValueError, match=r"practice must be one of \('related', 'self'\)"):
        LMMassConfig(practice="similar")
    target = task_problems(SPEC, 1, split="test", seed=0)[0]
    assert practice_prompt_for(PLAIN, "self", target.question) == PLAIN.solve(target.question)
    assert practice_prompt_for(PLAIN, "related", target.question) == PLAIN.practice(target.question)
    question, solution = parse_practice_completion("self", target.question, f" {target.solution}")
    assert question == target.question and practice_is_right("self", target, question, solution) is True
    assert practice_is_right("self", target, question, f"#### {target.answer + 1}") is False
    assert practice_is_right("related", target, "Not a templated question.", "#### 3") is None


def test_rows_that_need_skill_labels_are_refused_on_benchmarks_before_any_work(pretrained, tmp_path) -> None:
    import copy
    from pathlib import Path

    import mass_ref.lm.experiment as experiment
    from mass_ref.lm import LMDataSpec, ProblemSource

    fixtures = Path(__file__).resolve().parent.parent / "mass_ref" / "tasks" / "samples"
    source = ProblemSource(LMDataSpec(train="gsm8k", test="gsm8k", train_path=str(fixtures / "gsm8k_train_sample.jsonl"),
                                      test_path=str(fixtures / "gsm8k_test_sample.jsonl")))
    model = add_lora(copy.deepcopy(pretrained[0]), r=2, alpha=4, seed=0)
    with pytest.raises(ValueError, match=r"rows \['related_gold'\] need the tiny task family"):
        experiment.evaluate_lm_methods(model, pretrained[1], PLAIN, SMALL, source, methods=["base", "related_gold"],
                                       seed=0, steps=1, output_dir=tmp_path, n_problems=2, num_examples=2)


class _GradientRecorder:
    """An optimiser stand-in for ``clipped_policy_update``: records each step's ``.grad`` and moves nothing."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params, self.steps = params, []

    def step(self) -> None:
        self.steps.append([p.grad.clone() for p in self.params])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


def test_the_policy_update_skips_chunks_whose_advantages_are_all_zero(peft64, pretrained) -> None:
    """A chunk of A = 0 rows is never forwarded, yet the gradient is L_clip's over every row (an independent
    autograd of the all-row surrogate plus γ·L_solve); with no signal at all the optimiser still steps on γ·L_solve."""
    from mass_ref.grpo import clipped_policy_loss
    from mass_ref.lm import completion_logprobs
    from mass_ref.lm import clipped_policy_update

    tokenizer = pretrained[1]
    problems = task_problems(SPEC, 6, split="train", seed=5)
    prompts = [PLAIN.solve(p.question) for p in problems]
    answers = [p.solution + " extra" * i for i, p in enumerate(problems)]
    advantages = torch.tensor([0.5, -1.0, 0.0, 0.0, 0.0, 0.5], dtype=torch.float64)  # chunks of 2: the middle is 0
    gold = sft_batch(tokenizer, [PLAIN.solve_pair(p.question, p.solution) for p in problems[:2]], add_bos=True)
    params = list(lora_parameters(peft64).values())
    seen: list[slice] = []

    def logp(rows: slice) -> torch.Tensor:
        seen.append(rows)
        return completion_logprobs(peft64, tokenizer, PLAIN, prompts[rows], answers[rows], device=torch.device("cpu"))

    def solve_loss() -> torch.Tensor:
        return 0.1 * sft_losses_per_example(peft64, gold).mean()

    recorder = _GradientRecorder(params)
    value = clipped_policy_update(peft64, recorder, logp, advantages, ppo_epochs=1, clip_eps=SMALL.clip_eps,
                                  micro_batch_size=2, extra_loss=solve_loss)
    assert seen == [slice(0, 2), slice(4, 6)]
    every_row = completion_logprobs(peft64, tokenizer, PLAIN, prompts, answers, device=torch.device("cpu"))
    surrogate = clipped_policy_loss(every_row, every_row.detach(), advantages, SMALL.clip_eps)
    assert value == pytest.approx(surrogate.item(), rel=1e-9)
    for got, want in zip(recorder.steps[0], torch.autograd.grad(surrogate + solve_loss(), params)):
        assert (got - want).norm() <= 1e-9 * want.norm()
    seen.clear()
    recorder = _GradientRecorder(params)
    assert clipped_policy_update(peft64, recorder, logp, torch.zeros(6, dtype=torch.float64), ppo_epochs=2,
                                 clip_eps=SMALL.clip_eps, extra_loss=solve_loss) == 0
    assert seen == [] and len(recorder.steps) == 2  # one optimiser step per epoch, on γ·L_solve alone
    for got, want in zip(recorder.steps[1], torch.autograd.grad(solve_loss(), params)):
        assert torch.equal(got, want)


@pytest.mark.parametrize(("advantages", "options", "message"), [
    (torch.zeros(2, 3), {}, r"advantages must be 1-D.*\(2, 3\)"),
    (torch.zeros(6), {"ppo_epochs": 0}, r"ppo_epochs must be an integer >= 1; got 0"),
    (torch.zeros(6), {"clip_eps": 0.0}, r"clip_eps must be positive; got 0.0"),
    (torch.zeros(6), {"micro_batch_size": 0}, r"micro_batch_size must be None \(one pass\) or an integer >= 1; got 0"),
])
def test_the_policy_update_refuses_bad_input_before_any_work(peft64, advantages, options, message) -> None:
    from mass_ref.lm import clipped_policy_update

    def logp(rows: slice) -> torch.Tensor:
        raise AssertionError("a sequence was forwarded before the arguments were checked")

    recorder = _GradientRecorder(list(lora_parameters(peft64).values()))
    with pytest.raises(ValueError, match=message):
        clipped_policy_update(peft64, recorder, logp, advantages, **{"ppo_epochs": 1, "clip_eps": 0.2, **options})
    assert recorder.steps == []


@pytest.mark.parametrize("checkpointing", [False, True])
def test_micro_batched_policy_updates_have_the_full_batchs_gradient_and_steps(peft64, pretrained,
                                                                              checkpointing) -> None:
    import copy

    from mass_ref.lm import completion_logprobs
    from mass_ref.lm import clipped_policy_update

    tokenizer = pretrained[1]
    problems = task_problems(SPEC, 5, split="train", seed=4)
    prompts = [PLAIN.solve(p.question) for p in problems]
    answers = [p.solution + " extra" * i for i, p in enumerate(problems)]  # unequal lengths: chunks pad differently
    advantages = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    gold = sft_batch(tokenizer, [PLAIN.solve_pair(p.question, p.solution) for p in problems[:2]], add_bos=True)

    def run(model, optimizer, micro: int | None, epochs: int) -> float:
        return clipped_policy_update(
            model, optimizer,
            lambda s: completion_logprobs(model, tokenizer, PLAIN, prompts[s], answers[s], device=torch.device("cpu")),
            advantages, ppo_epochs=epochs, clip_eps=SMALL.clip_eps, micro_batch_size=micro,
            gradient_checkpointing=checkpointing, extra_loss=lambda: 0.1 * sft_losses_per_example(model, gold).mean())

    params = list(lora_parameters(peft64).values())
    recorded = {}
    for micro in (None, 2, 3):
        recorder = _GradientRecorder(params)
        recorded[micro] = (run(peft64, recorder, micro, 1), recorder.steps[0])
    full_loss, full = recorded[None]
    for micro in (2, 3):
        loss, grads = recorded[micro]
        assert loss == pytest.approx(full_loss, rel=1e-10)
        for a, b in zip(full, grads):
            assert (b - a).norm() <= 1e-10 * a.norm()
    # two PPO epochs of Adam (π_old from the first epoch's chunks): the same LoRA tensors
    finals = []
    for micro in (None, 2):
        model = copy.deepcopy(peft64)
        run(model, torch.optim.Adam(list(lora_parameters(model).values()), lr=1e-2), micro, 2)
        finals.append(lora_parameters(model))
    for name, tensor in finals[0].items():
        torch.testing.assert_close(finals[1][name], tensor, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("update_rows", [0, 2.5, True])
def test_evaluation_refuses_a_bad_update_rows_before_any_work(tmp_path, update_rows) -> None:
    from mass_ref.lm import evaluate_lm_methods

    # no model, tokenizer or format: the check must come before anything touches them
    with pytest.raises(ValueError, match=r"update_rows must be an integer >= 1 \(examples per update pass\); got"):
        evaluate_lm_methods(None, None, None, SMALL, SPEC, methods=["base"], seed=0, steps=0, output_dir=tmp_path,
                            n_problems=2, num_examples=2, update_rows=update_rows)
    assert list(tmp_path.iterdir()) == []
