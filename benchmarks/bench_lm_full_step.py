"""Where one whole LM MASS meta-step spends its time, phase by phase, today's code beside a baseline revision.

    python benchmarks/bench_lm_full_step.py [--model smollm2|tiny] [--steps 3] [--threads 2]
                                            [--baseline REV] [--json results/bench/full_step_smollm2.json]

One meta-step is :func:`mass_ref.lm.lm_meta_step` (generate m practice completions per problem, score
them, K differentiable SGD steps, the outer loss, the attributions, the generator's policy update) in
verifier mode (MASS: k answers sampled from the adapted model), SmolLM2-135M-Instruct with LoRA r = 8
on q/v, chapter 5's self practice, m = 6, K = 2, 2 problems per step, 8 answers. Each phase is timed by
wrapping the module-level function ``lm_meta_step`` calls for it (``PHASES``; time in a nested timed
call counts for the inner phase only), so the same script times any revision of the package. Beside it: one LoRA SFT step on the same m examples and the meta-gradient
alone at K = 1 (``weight_meta_gradient`` on one problem's batch, gold outer loss), whose ratio to the
SFT step is the issue's second target.

``--baseline REV`` runs the same measurement a second time in a fresh process on the package at git
revision REV (checked out into a temporary worktree), so both columns come from one run on one machine.
The first step of each process is a warm-up and is not counted. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = {  # phase -> names in mass_ref.lm.mass that lm_meta_step calls for it (whichever the revision has)
    "sampling (practice, and answers from φ')": ("sample_answers",),
    "score (features)": ("scorer_features",),
    "inner steps again, to sample from φ'": ("_sample_adapted_answers",),
    "meta-gradient (K steps, outer, attribution)": ("weight_meta_gradient",),
    "generator policy update": ("_policy_update", "clipped_policy_update"),
}


def measure(args: argparse.Namespace) -> dict:
    """Runs in the measured process: returns seconds per phase (median over steps) and the reference steps."""
    import torch

    import mass_ref.lm.mass as lm_mass
    from mass_ref.lm import LMMassConfig, LMScorer, add_lora, chat_format, lora_parameters, lm_meta_step, sft_batch
    from mass_ref.lm import sft_losses_per_example
    from mass_ref.lm.ttt import lora_sft_steps_on_batch
    from mass_ref.metagrad import weight_meta_gradient
    from mass_ref.tasks import sample_arithmetic_problems

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "smollm2":
        from mass_ref.lm import load_smollm2

        base, tokenizer = load_smollm2(args.cache_dir)
        fmt = chat_format(tokenizer)
    else:
        from mass_ref.lm import TinyLMSpec, pretrained_tiny_lm
        from mass_ref.lm.formats import PLAIN

        base, tokenizer, _ = pretrained_tiny_lm(TinyLMSpec(), Path(args.cache_dir) / "tiny_lm", progress=False)
        fmt = PLAIN
    model = add_lora(base, r=8, alpha=16, seed=0)
    hidden = model.config.hidden_size
    scorer = LMScorer(hidden)
    config = LMMassConfig(method="mass", outer_mode="verifier", practice="self", num_synthetic=args.m,
                          num_inner_steps=2, meta_batch_size=2, inner_lr=1.0, scorer_lr=1e-2, num_answers=8,
                          ppo_epochs=2, practice_max_new_tokens=96, answer_max_new_tokens=64)
    lora = lora_parameters(model)
    optimizers = {"generator": torch.optim.Adam(list(lora.values()), lr=config.generator_lr),
                  "scorer": torch.optim.Adam(scorer.parameters(), lr=config.scorer_lr)}
    spent: dict[str, float] = defaultdict(float)
    for phase, names in PHASES.items():
        for name in names:
            if hasattr(lm_mass, name):
                setattr(lm_mass, name, _timed(getattr(lm_mass, name), phase, spent))
    problems = sample_arithmetic_problems(2 * (args.steps + 1) + args.m + 1, seed=1, split="train",
                                          number_range=(2, 9))
    per_step: dict[str, list[float]] = defaultdict(list)
    pass_rates = []
    for t in range(args.steps + 1):
        spent.clear()
        start = time.perf_counter()
        info = lm_meta_step(model, tokenizer, fmt, scorer, problems[2 * t: 2 * t + 2], config, optimizers, seed=t)
        total = time.perf_counter() - start
        pass_rates.append(info["answer_pass_rate"])
        if t == 0:
            continue  # warm-up
        per_step["whole meta-step"].append(total)
        for phase in PHASES:
            per_step[phase].append(spent.get(phase, 0.0))
        per_step["other"].append(total - sum(spent.values()))

    # The two reference costs: one LoRA SFT step and the meta-gradient alone at K = 1 on the same m examples.
    pairs = [fmt.solve_pair(p.question, p.solution) for p in problems[: args.m]]
    batch = sft_batch(tokenizer, pairs, add_bos=fmt.add_bos)
    gold = sft_batch(tokenizer, [fmt.solve_pair(problems[-1].question, problems[-1].solution)], add_bos=fmt.add_bos)
    weights = torch.full((args.m,), 1.0 / args.m)
    count = "num_steps" if "num_steps" in inspect.signature(lora_sft_steps_on_batch).parameters else "steps"  # renamed
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        lora_sft_steps_on_batch(model, batch, **{count: 1}, lr=1e-3, optimizer="adam")
        per_step["LoRA SFT step (reference)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        weight_meta_gradient(model, sft_losses_per_example, batch, lambda f: sft_losses_per_example(f, gold).mean(),
                             weights=weights, inner_lr=1.0, num_steps=1, params=lora, with_params=False)
        per_step["meta-gradient alone, K = 1"].append(time.perf_counter() - start)
    for key in ("LoRA SFT step (reference)", "meta-gradient alone, K = 1"):
        per_step[key] = per_step[key][1:]  # warm-up
    return {"medians": {k: statistics.median(v) for k, v in per_step.items()}, "runs": dict(per_step),
            "answer_pass_rates": pass_rates, "threads": args.threads, "torch": torch.__version__}


def _timed(fn, phase: str, spent: dict[str, float], stack: list[float] = []):  # noqa: B006 (shared on purpose)
    """``fn`` timed into ``spent[phase]``, exclusively: time spent in a nested timed call counts for its own phase."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        stack.append(0.0)  # time taken by nested timed calls
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            spent[phase] += elapsed - stack.pop()
            if stack:
                stack[-1] += elapsed

    return wrapper


def run_in_subprocess(args: argparse.Namespace, package_root: Path) -> dict:
    """Measure with the package at ``package_root`` in a fresh process (PYTHONPATH puts it first)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        target = Path(out.name)
    command = [sys.executable, __file__, "--measure-only", str(target), "--model", args.model, "--steps",
               str(args.steps), "--threads", str(args.threads), "--m", str(args.m), "--cache-dir", str(args.cache_dir)]
    env = dict(os.environ, PYTHONPATH=str(package_root), OMP_NUM_THREADS=str(args.threads))
    subprocess.run(command, check=True, env=env)
    return json.loads(target.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--steps", type=int, default=3, help="timed meta-steps after one warm-up (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--m", type=int, default=6, help="practice examples per problem")
    parser.add_argument("--baseline", default=None, help="git revision to time beside today's code")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "build" / "cache" / "smollm2")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--measure-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.threads < 1 or args.m < 2:
        parser.error("--steps and --threads must be >= 1 and --m >= 2")
    if args.measure_only is not None:
        args.measure_only.write_text(json.dumps(measure(args)))
        return
    columns = {"today": run_in_subprocess(args, ROOT)}
    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp:
            worktree = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.baseline],
                           check=True, capture_output=True)
            try:
                columns[f"baseline {args.baseline}"] = run_in_subprocess(args, worktree)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    names = list(columns)
    rows = list(columns["today"]["medians"])
    print(f"\n{args.model}: verifier meta-step, m = {args.m}, K = 2, 2 problems, 8 answers; "
          f"{args.threads} threads; median of {args.steps} steps (seconds)")
    header = f"{'phase':46s}" + "".join(f"{n[:22]:>24s}" for n in names)
    if len(names) == 2:
        header += f"{'today / baseline':>18s}"
    print(header)
    for row in rows:
        values = [columns[n]["medians"].get(row, float("nan")) for n in names]
        whole = [columns[n]["medians"]["whole meta-step"] for n in names]
        line = f"{row:46s}" + "".join(f"{v:14.2f} ({100 * v / w:4.0f}%)" if row in PHASES or row == "other"
                                      else f"{v:14.2f}        " for v, w in zip(values, whole))
        if len(names) == 2:
            line += f"{values[0] / values[1]:17.2f}x"
        print(line)
    for n in names:
        print(f"{n}: answer pass rate per step (warm-up first) {columns[n].get('answer_pass_rates')}")
    if len(names) == 2:  # step t: the same problems and seeds in both columns (a revision whose φ' differs by
        # rounding can still draw other answers: the pass rates above say where)
        today, base = (columns[n]["runs"]["whole meta-step"] for n in names)
        rates = columns[names[0]]["answer_pass_rates"][1:]
        for t, (a, b, rate) in enumerate(zip(today, base, rates), start=1):
            signal = "no verifier signal" if rate in (0.0, 1.0) else f"answer pass rate {rate:.3f}"
            print(f"step {t}: {a:6.1f} s / {b:6.1f} s = {a / b:.2f}x  ({signal})")
        print(f"all {len(today)} steps: {sum(today):.1f} s / {sum(base):.1f} s = {sum(today) / sum(base):.2f}x")
    for n in names:
        med = columns[n]["medians"]
        print(f"{n}: meta-gradient alone at K = 1 / LoRA SFT step = "
              f"{med['meta-gradient alone, K = 1'] / med['LoRA SFT step (reference)']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": args.model, "m": args.m, "steps": args.steps,
                                         "threads": args.threads, "columns": columns}, indent=1) + "\n")


if __name__ == "__main__":
    main()
