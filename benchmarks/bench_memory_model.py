"""Measured against predicted peak memory (:mod:`mass_ref.lm.memory`) on randomly initialised small Llamas.

    python benchmarks/bench_memory_model.py [--device cpu|cuda] [--json OUT]

Each measurement runs in a fresh Python process (``--child CASE_JSON``, one JSON line out) with
``MALLOC_MMAP_THRESHOLD_=65536``, so that glibc returns freed tensors to the system and the resident set
follows the live bytes (on a CUDA device the allocator's own peak is read). A case is a policy-update chunk
(``mass_ref.lm.clipped_policy_update`` over ``n`` sequences, ``micro_batch_size`` at a time, with or without
layer checkpointing) or one meta-gradient (``weight_meta_gradient`` "checkpointed"/"unroll", m support
examples, K steps, a one-example outer loss). Figures are printed, never asserted (tests/test_memory.py
asserts the tolerances).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

MODEL = {"vocab": 16000, "hidden": 128, "intermediate": 344, "layers": 2, "heads": 4, "kv_heads": 2}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
RANK = 8
CASES = [
    {"kind": "policy", "n": 4, "chunk": 4, "seq_len": 64, "supervised": 32},
    {"kind": "policy", "n": 8, "chunk": 8, "seq_len": 64, "supervised": 32},
    {"kind": "policy", "n": 8, "chunk": 8, "seq_len": 128, "supervised": 32, "checkpointing": True},
    {"kind": "policy", "n": 4, "chunk": 4, "seq_len": 256, "supervised": 16},
    {"kind": "checkpointed", "m": 4, "steps": 2, "seq_len": 64, "supervised": 32},
    {"kind": "checkpointed", "m": 8, "steps": 2, "seq_len": 96, "supervised": 16},
    {"kind": "unroll", "m": 4, "steps": 2, "seq_len": 64, "supervised": 32},
]


def _model(case: dict[str, Any]) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mass_ref.lm.models import add_lora

    shape = {**MODEL, **case.get("model", {})}
    config = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                         intermediate_size=shape["intermediate"], num_hidden_layers=shape["layers"],
                         num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                         tie_word_embeddings=True, attn_implementation="eager")
    torch.manual_seed(0)
    return config, add_lora(LlamaForCausalLM(config).eval(), r=RANK, alpha=2 * RANK, target_modules=TARGETS, seed=0)


def _batch(n: int, seq_len: int, supervised: int, vocab: int) -> Any:
    import torch

    from mass_ref.lm.sft import collate_sft

    ids = torch.randint(3, vocab, (n, seq_len - 1), generator=torch.Generator().manual_seed(n)).tolist()
    cut = seq_len - supervised  # prompt tokens; answer + eos = the supervised positions
    return collate_sft([r[:cut] for r in ids], [r[cut:] for r in ids], pad_token_id=0, eos_token_id=2)


def run_case(case: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Measure one case in this process and predict it; returns the case with ``measured``/``predicted`` bytes."""
    import torch

    from mass_ref.lm.policy_update import clipped_policy_update
    from mass_ref.lm.memory import ModelShape, measure_peak_bytes, meta_gradient_memory, policy_chunk_memory
    from mass_ref.lm.models import lora_parameters
    from mass_ref.lm.sft import sft_losses_per_example
    from mass_ref.metagrad import weight_meta_gradient

    config, model = _model(case)
    model.to(device)
    shape, kind = ModelShape.from_config(config), case["kind"]
    common = dict(seq_len=case["seq_len"], supervised=case["supervised"], rank=RANK, targets=TARGETS)
    if kind == "policy":
        batch = _batch(case["n"], case["seq_len"], case["supervised"], shape.vocab).to(device)
        params = list(lora_parameters(model).values())
        optimizer = torch.optim.SGD(params, lr=1e-3)
        advantages = torch.linspace(-1, 1, case["n"], device=device)

        def logp(s: slice) -> torch.Tensor:
            chunk = type(batch)(batch.input_ids[s], batch.attention_mask[s], batch.labels[s])
            return -sft_losses_per_example(model, chunk)

        def update(n: int) -> None:
            clipped_policy_update(model, optimizer, logp, advantages[:n], ppo_epochs=1, clip_eps=0.2,
                                  micro_batch_size=case["chunk"], gradient_checkpointing=case.get("checkpointing", False))

        update(1)  # warm-up: the first backward maps code and per-thread buffers that are not tensors
        measured = measure_peak_bytes(lambda: update(case["n"]), device)
        predicted = policy_chunk_memory(shape, sequences=min(case["chunk"], case["n"]),
                                        checkpointing=case.get("checkpointing", False), **common).total
    else:
        support = _batch(case["m"], case["seq_len"], case["supervised"], shape.vocab).to(device)
        query = _batch(1, case["seq_len"], case["supervised"], shape.vocab).to(device)
        lora = {n: t.detach() for n, t in lora_parameters(model).items()}
        weights = torch.full((case["m"],), 1 / case["m"], device=device)

        def meta(m: int) -> None:
            sub = type(support)(support.input_ids[:m], support.attention_mask[:m], support.labels[:m])
            weight_meta_gradient(model, sft_losses_per_example, sub, lambda f: sft_losses_per_example(f, query).sum(),
                                 weights=weights[:m], inner_lr=0.1, num_steps=case["steps"], params=lora, mode=kind,
                                 with_params=False)

        meta(1)  # warm-up, as above
        measured = measure_peak_bytes(lambda: meta(case["m"]), device)
        predicted = meta_gradient_memory(shape, kind, m=case["m"], num_steps=case["steps"], outer_sequences=1,
                                         outer_seq_len=case["seq_len"], outer_supervised=case["supervised"],
                                         **common).total
    return {**case, "device": device, "measured": measured, "predicted": predicted}


def in_fresh_process(cases: list[dict[str, Any]], device: str = "cpu") -> list[dict[str, Any]]:
    """:func:`run_case` for each case, one after another, in one new interpreter (one torch thread).

    The first case runs twice and its first row is dropped: the process's first measurement also pays for
    code pages and thread buffers touched for the first time (a few MB), which are not the model's.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cases[:1] + cases), "--device", device], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the measuring child failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        import torch

        torch.set_num_threads(1)
        for case in json.loads(args.child):
            print(json.dumps(run_case(case, args.device)), flush=True)
        return
    rows = in_fresh_process(CASES, args.device)
    print(f"{'case':62s} {'measured MiB':>12s} {'predicted MiB':>13s} {'pred/meas':>9s}")
    for row in rows:
        name = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("measured", "predicted", "device"))
        print(f"{name:62s} {row['measured'] / 2**20:12.1f} {row['predicted'] / 2**20:13.1f} "
              f"{row['predicted'] / row['measured']:9.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
