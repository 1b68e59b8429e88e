"""One LoRA SFT step vs one second-order meta-step on the same batch of m arithmetic examples.

    python benchmarks/bench_lm_meta_step.py [--m 6] [--repeats 3] [--threads N] [--seed 0]
                                            [--smollm2 [--cache-dir DIR]]

The tiny LM (a 2-layer Llama with a byte-level BPE tokenizer) is built and pretrained briefly in
the script; ``--smollm2`` also times SmolLM2-135M-Instruct (LoRA r=8 on q/v, chat-template
prompts), converted once into ``--cache-dir``. A meta-step is ``inner_adapt`` through K = 1 and
K = 2 differentiable SGD steps over the LoRA tensors, then the outer loss on a held-out example
and ``torch.autograd.grad`` w.r.t. the example weights and the LoRA tensors
(:func:`mass_ref.lm.timing.time_sft_and_meta_step`). Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

from mass_ref.lm import add_lora, build_tiny_lm, load_smollm2, pretrain_lm, sft_batch, train_tokenizer
from mass_ref.lm.timing import time_sft_and_meta_step
from mass_ref.tasks import sample_arithmetic_problems


def plain_pairs(problems) -> list[tuple[str, str]]:
    return [(f"Question: {p.question}\nAnswer:\n", p.solution) for p in problems]


def chat_pairs(tokenizer, problems) -> list[tuple[str, str]]:
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p.question}], tokenize=False,
                                             add_generation_prompt=True) for p in problems]
    return [(prompt, p.solution) for prompt, p in zip(prompts, problems)]


def report(name: str, model, tokenizer, pairs, args: argparse.Namespace) -> None:
    batch, query = sft_batch(tokenizer, pairs[: args.m]), sft_batch(tokenizer, pairs[args.m :])
    result = time_sft_and_meta_step(model, batch, query, num_steps=(1, 2), repeats=args.repeats)
    sft = result["sft_step_s"]
    print(f"\n{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"m = {result['m']} examples ({result['tokens']} tokens), held-out query 1 example")
    print(f"{'step':34s} {'seconds':>10s} {'vs SFT':>8s}")
    print(f"{'LoRA SFT step (fwd+bwd+Adam)':34s} {sft:10.4f} {1.0:7.2f}x")
    for k, seconds in result["meta_step_s"].items():
        print(f"{f'meta-step, K = {k} inner step(s)':34s} {seconds:10.4f} {result['ratio'][k]:7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, default=6, help="examples in the inner batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=60, help="tiny-LM pretraining steps")
    parser.add_argument("--smollm2", action="store_true", help="also time SmolLM2-135M-Instruct")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "mass_ref_smollm2",
                        help="where SmolLM2 is converted once (default: %(default)s)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")  # raised inside peft
    if args.m < 1 or args.repeats < 1 or args.pretrain_steps < 0:
        parser.error("--m and --repeats must be >= 1, --pretrain-steps >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    problems = sample_arithmetic_problems(args.m + 1, seed=args.seed, split="train")
    corpus = [f"Question: {p.question}\nAnswer:\n{p.solution}"
              for p in sample_arithmetic_problems(500, seed=args.seed + 1, split="train")]
    start = time.perf_counter()
    tokenizer = train_tokenizer(corpus, vocab_size=400)
    model = build_tiny_lm(tokenizer, hidden_size=64, layers=2, heads=4, max_positions=512, seed=args.seed)
    pretrain_lm(model, tokenizer, corpus, steps=args.pretrain_steps, batch_size=16, lr=3e-3, seed=args.seed,
                progress=False)
    print(f"tiny LM built and pretrained ({args.pretrain_steps} steps) in {time.perf_counter() - start:.1f} s")
    report("tiny LM, LoRA r=8 on q/v", add_lora(model, r=8, seed=args.seed), tokenizer, plain_pairs(problems), args)

    if args.smollm2:
        start = time.perf_counter()
        model, tokenizer = load_smollm2(args.cache_dir)
        print(f"\nSmolLM2 loaded from {args.cache_dir} in {time.perf_counter() - start:.1f} s")
        report("SmolLM2-135M-Instruct, LoRA r=8 on q/v", add_lora(model, r=8, seed=args.seed), tokenizer,
               chat_pairs(tokenizer, problems), args)


if __name__ == "__main__":
    main()
