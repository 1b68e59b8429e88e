"""The compute precision (mass_ref/lm/amp.py): its choice per device, fp32 LoRA and scorer, bf16 attributions."""

from __future__ import annotations

import pytest
import torch

import mass_ref.lm.mass as lm_mass
from mass_ref.lm import (PLAIN, LMMassConfig, LMScorer, TinyLMSpec, add_lora, lora_parameters, lm_meta_step,
                         pretrained_tiny_lm, sft_batch, sft_losses_per_example, task_problems)
from mass_ref.lm.amp import autocast, fp32_scope, native_bf16, resolve_precision
from mass_ref.lm.spec import ALL_LINEAR
from mass_ref.metagrad import weight_meta_gradient
from mass_ref.profiles import SMOKE_TINY_LM

SPEC = TinyLMSpec(**SMOKE_TINY_LM)
GPU_INNER_LR = 1e-2  # configs/lm_mass_gpu.yaml's mass.inner_lr


@pytest.fixture(scope="module")
def pretrained(smoke_tiny_lm_cache):
    return pretrained_tiny_lm(SPEC, smoke_tiny_lm_cache, progress=False)


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def test_auto_is_fp32_on_the_cpu_and_explicit_choices_are_kept() -> None:
    assert resolve_precision("auto", "cpu") == "fp32" and not native_bf16("cpu")
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp32", "cpu") == "fp32"


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "fp32"), ((7, 0), "fp32"), ((8, 0), "bf16"),
                                                      ((9, 0), "bf16")])
def test_auto_picks_bf16_only_on_cards_with_native_bf16(monkeypatch, capability, expected) -> None:
    _fake_cuda(monkeypatch, capability)  # a T4 is (7, 5), a V100 (7, 0), an A100 (8, 0), an H100 (9, 0)
    assert resolve_precision("auto", "cuda:0") == expected
    assert native_bf16(torch.device("cuda", 0)) == (expected == "bf16")
    assert resolve_precision("fp32", "cuda:0") == "fp32" and resolve_precision("bf16", "cuda:0") == "bf16"


def test_fp16_and_unknown_precisions_are_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match="fp16 needs loss scaling.*use fp32"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'bf16', 'fp32'\); got 'bogus'"):
        LMMassConfig(precision="bogus")
    with pytest.raises(ValueError, match="use fp32"):
        LMMassConfig(precision="fp16")


def test_autocast_is_bf16_only_when_the_precision_resolves_to_it() -> None:
    x = torch.randn(4, 4)
    with autocast("bf16", "cpu"):
        assert (x @ x).dtype == torch.bfloat16
        with fp32_scope("cpu"):
            assert (x @ x).dtype == torch.float32
    with autocast("auto", "cpu"):
        assert (x @ x).dtype == torch.float32


def test_lora_tensors_are_fp32_master_copies_of_a_bf16_base(pretrained) -> None:
    """Adam's ~lr-sized steps on bf16 LoRA tensors mostly round away (about 2/3 of the entries move here)."""
    import copy

    model = add_lora(copy.deepcopy(pretrained[0]).to(torch.bfloat16), r=4, alpha=8,
                     target_modules=("q_proj", "v_proj", "up_proj"), seed=0)
    lora = lora_parameters(model)
    assert {p.dtype for p in lora.values()} == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    problems = task_problems(SPEC, 4, split="train", seed=5)
    batch = sft_batch(pretrained[1], [PLAIN.solve_pair(p.question, p.solution) for p in problems], add_bos=True)
    start = {n: p.detach().clone() for n, p in lora.items()}
    optimizer = torch.optim.Adam(list(lora.values()), lr=1e-5)
    for _ in range(10):
        optimizer.zero_grad()
        sft_losses_per_example(model, batch).mean().backward()
        optimizer.step()
    changed = sum(int((lora[n] != start[n]).sum()) for n in lora) / sum(p.numel() for p in lora.values())
    assert changed >= 0.99


@pytest.mark.parametrize("mode", ["checkpointed", "unroll"])
def test_bf16_autocast_attributions_agree_with_fp32(pretrained, mode: str) -> None:
    """∂L_out/∂w of K = 2 inner steps at the GPU config's inner lr, on the fp32 tiny LM with all-linear LoRA.

    Measured: cosine 0.999995 (checkpointed) and 0.999996 (unroll); 0.9996–0.9997 after subtracting
    the mean attribution (what the GRPO advantages see); the ranking of the 6 examples is the same.
    """
    import copy

    model, tokenizer, _ = pretrained
    model = add_lora(copy.deepcopy(model), r=4, alpha=8, target_modules=ALL_LINEAR, seed=0)
    pairs = [PLAIN.solve_pair(p.question, p.solution) for p in task_problems(SPEC, 8, split="train", seed=5)]
    support, query = sft_batch(tokenizer, pairs[:6], add_bos=True), sft_batch(tokenizer, pairs[6:], add_bos=True)
    params = {n: t.detach() for n, t in lora_parameters(model).items()}
    got = {}
    for precision in ("fp32", "bf16"):
        with autocast(precision, "cpu"):
            got[precision] = weight_meta_gradient(
                model, sft_losses_per_example, support, lambda f: sft_losses_per_example(f, query).mean(),
                weights=torch.full((6,), 1 / 6), inner_lr=GPU_INNER_LR, num_steps=2, params=params, mode=mode,
                with_params=False).weights
    fp32, bf16 = got["fp32"], got["bf16"]
    assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)  # bf16 did run
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(fp32, bf16, dim=0) >= 0.999
    assert cosine(fp32 - fp32.mean(), bf16 - bf16.mean(), dim=0) >= 0.999


def test_scorer_weights_stay_fp32_under_bf16_autocast(pretrained, monkeypatch) -> None:
    """An untrained scorer gives s_i = 1/m: exactly fp32's 1/3, not bf16's 0.33203125."""
    import copy

    model, tokenizer, _ = pretrained
    model = add_lora(copy.deepcopy(model), r=2, alpha=4, seed=0)
    config = LMMassConfig(num_synthetic=3, num_inner_steps=1, meta_batch_size=1, num_answers=2,
                          practice_max_new_tokens=30, answer_max_new_tokens=16, train_generator=False,
                          practice="self", outer_mode="gold")
    (problem,) = task_problems(SPEC, 1, split="train", seed=7)
    monkeypatch.setattr(lm_mass, "sample_answers", lambda *a, **k: [[f" {problem.solution}"] * 3])
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs["weights"].detach().clone())
        return weight_meta_gradient(*args, **kwargs)

    monkeypatch.setattr(lm_mass, "weight_meta_gradient", recording)
    scorer = LMScorer(model.config.hidden_size)
    optimizer = torch.optim.SGD(scorer.parameters(), lr=0.0)
    grads: list[torch.Tensor] = []
    optimizer.step = lambda *a, **k: grads.extend(p.grad.clone() for p in scorer.parameters() if p.grad is not None)
    with autocast("bf16", "cpu"):
        lm_meta_step(model, tokenizer, PLAIN, scorer, [problem], config, {"scorer": optimizer}, seed=0)
    assert len(seen) == 1 and seen[0].dtype == torch.float32
    assert torch.equal(seen[0], torch.full((3,), 1 / 3))
    assert grads and all(g.dtype == torch.float32 for g in grads)  # ∂L/∂η reached the fp32 scorer


def test_the_run_environment_names_the_resolved_precision_and_the_card(monkeypatch) -> None:
    from mass_ref.lm.summary import run_environment

    assert run_environment("auto", "cpu") == {"precision": "fp32", "device": "cpu", "device_name": "cpu"}
    assert run_environment("bf16", "cpu")["precision"] == "bf16"
    _fake_cuda(monkeypatch, (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert run_environment("auto", "cuda:0") == {"precision": "fp32", "device": "cuda:0", "device_name": "Tesla T4"}


def test_a_new_scorer_is_fp32_on_a_bf16_base(pretrained) -> None:
    import copy

    from mass_ref.lm import experiment

    for dtype, expected in ((torch.bfloat16, torch.float32), (torch.float32, torch.float32),
                            (torch.float64, torch.float64)):
        model = copy.deepcopy(pretrained[0]).to(dtype)
        for hidden_states in (True, False):
            scorer = experiment._new_scorer(model, seed=0, device=torch.device("cpu"), use_hidden_states=hidden_states)
            assert {p.dtype for p in scorer.parameters()} == {expected}
