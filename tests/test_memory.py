"""The memory model (mass_ref.lm.memory): its count against autograd's saved tensors, its peaks against measured
ones, and the micro-batched policy update's peak, flat in the number of sequences (fresh child processes)."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from mass_ref import LARGE_CARD_GIB, load_config, profile_sizes, project_root
from mass_ref.lm import MemoryEstimate, ModelShape, policy_chunk_memory
from mass_ref.lm.run_config import run_memory_estimates

ROOT = project_root()

sys.path.insert(0, str(project_root() / "benchmarks"))
import bench_memory_model as bench  # noqa: E402  (the measuring harness: one fresh process per call)

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.mark.parametrize("targets", [ATTENTION, ("q_proj", "v_proj", "up_proj", "down_proj")])
def test_the_count_is_what_autograd_saves(targets: tuple[str, ...]) -> None:
    """F_layer, the final norm and one logits unit per sequence = the bytes saved_tensors_hooks sees (fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mass_ref.lm import add_lora, sft_losses_per_example
    from mass_ref.lm.sft import collate_sft

    config = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")
    model = add_lora(LlamaForCausalLM(config).eval(), r=4, target_modules=targets, seed=0)
    c, length, supervised = 3, 40, 12
    batch = collate_sft([list(range(3, 3 + length - supervised))] * c, [list(range(5, 5 + supervised - 1))] * c,
                        pad_token_id=0, eos_token_id=2)
    known = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and t.untyped_storage().data_ptr() not in known:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sft_losses_per_example(model, batch)
    rope = 2 * length * (64 // 4) * 4  # cos and sin, once per forward: not per sequence, not counted
    estimate = policy_chunk_memory(ModelShape.from_config(config), sequences=c, seq_len=length,
                                   supervised=supervised, rank=4, targets=targets)
    unit = c * supervised * config.vocab_size * 4
    loss_scalars = 4 * (c * supervised + c + 1)  # per-position CE, per-row counts, a scalar: not modelled
    # the peak adds two more units; the smallest modelled term (an RMSNorm's rsqrt, c·T floats) is 480 B > slack
    assert sum(saved.values()) - rope == pytest.approx(estimate.total - 2 * unit, abs=loss_scalars)
    assert isinstance(estimate, MemoryEstimate) and estimate.gib == estimate.total / 2**30


def test_the_gpu_config_is_estimated_per_phase() -> None:
    from transformers import Qwen2Config

    from mass_ref.config import load_config
    from mass_ref.lm import run_memory_estimates

    config = load_config(project_root() / "configs" / "lm_mass_gpu.yaml")
    qwen = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
    estimates = run_memory_estimates(config, qwen, prompt_tokens=200)
    assert estimates["peak"].total == max(e.total for name, e in estimates.items() if name != "peak")
    assert 0.4e9 < ModelShape.from_config(qwen).base_parameters() < 0.6e9  # Qwen2.5-0.5B: 494M parameters
    unchunked = run_memory_estimates(
        type(config)(**{**vars(config), "mass": type(config.mass)(**{**vars(config.mass), "micro_batch_size": None})}),
        qwen, prompt_tokens=200)
    assert unchunked["generator policy update"].total > 5 * estimates["generator policy update"].total


@pytest.mark.slow  # one child process: about 15 s on one thread
def test_the_policy_update_peak_is_flat_in_the_number_of_sequences_at_a_fixed_chunk() -> None:
    """Chunks of 4: n = 8, 16, 32 peak alike (within 15%: the RSS is coarse to a few MB over ~30 MB, and the
    gradients' and π_old's few bytes per sequence grow); one pass over all n grows with n (so the test can fail)."""
    cases = [{"kind": "policy", "n": n, "chunk": chunk, "seq_len": 48, "supervised": 24}
             for n, chunk in ((8, 4), (16, 4), (32, 4), (8, 8), (32, 32))]
    peaks = [row["measured"] for row in bench.in_fresh_process(cases)]
    chunked, (all_8, all_32) = peaks[:3], peaks[3:]
    assert max(chunked) <= 1.15 * min(chunked), peaks
    assert all_32 > 2.5 * all_8 and all_32 > 3 * max(chunked), peaks


@pytest.mark.slow  # one child process: about 25 s on one thread
def test_the_model_predicts_measured_cpu_peaks_within_a_quarter() -> None:
    """Policy chunks (with and without layer checkpointing) and meta-gradients ("checkpointed", "unroll").

    Calibrated: SECOND_ORDER_UNITS and the B_layer coefficients (module docstring), on m = 4, T = 64, S = 32;
    the other sizes are checks."""
    rows = bench.in_fresh_process(bench.CASES)
    ratios = {str({k: v for k, v in row.items() if k not in ("measured", "predicted")}): row["predicted"] / row[
        "measured"] for row in rows}
    assert len(ratios) == len(bench.CASES) and all(0.75 <= r <= 1.25 for r in ratios.values()), ratios


QWEN_2_5_0_5B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
SMALLEST_CARD_GIB = {"lm_mass_gpu": LARGE_CARD_GIB, "lm_mass_gpu_t4": 14.7}  # a T4 reports 14.7 GiB
CARD_PRECISION = {"lm_mass_gpu": "bf16", "lm_mass_gpu_t4": "fp32"}  # what precision auto picks on those cards


@pytest.mark.parametrize("name", sorted(SMALLEST_CARD_GIB))
def test_every_gpu_config_states_its_predicted_peak_and_fits_the_smallest_card_that_gets_it(name: str) -> None:
    from transformers import Qwen2Config

    path = ROOT / "configs" / f"{name}.yaml"
    stated = re.search(r"^# Predicted peak: ([0-9.]+) GiB", path.read_text(), re.M)
    assert stated, f"{path.name} must state its predicted peak in a '# Predicted peak: N GiB' comment"
    peak = run_memory_estimates(load_config(path), Qwen2Config(**QWEN_2_5_0_5B), prompt_tokens=200,
                                auto_precision=CARD_PRECISION[name])["peak"].gib
    assert float(stated.group(1)) == pytest.approx(peak, abs=0.05), f"{path.name}: the model now predicts {peak:.1f}"
    assert peak <= 0.9 * SMALLEST_CARD_GIB[name]  # 10% headroom: the allocator's fragmentation, CUDA context
    sizes = profile_sizes("07_mass_gpu", "gpu")
    assert sizes.config_for_card(SMALLEST_CARD_GIB[name]) == f"configs/{name}.yaml"
