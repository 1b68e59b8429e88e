"""Chapter 5's validation check: could *any* label-free weighting of the LM's own attempts beat answering without an
update? Run on the TRAIN split only (never the held-out test problems), with the shipped meta-trained runs.

Validation problems are the training split's rare problems that use a held-out skill pair (the test split's kind of
problem, drawn from the training distribution with fresh seeds), so the check sees the same shift the test does.
For each trained method and seed it measures, on the same sampled attempts and the same one-step update:

* no update; the meta-trained scorer's weights; uniform weights; right-only weights (the oracle ceiling);
  the fixed label-free rule :func:`~mass_ref.lm.checked_only` (the attempts whose worked equations hold);
* a *supervised* ranking: a logistic regression on the scorer's four statistics, fitted with labels on
  seen-combination training problems, used as c·softmax(z/τ) for a few (τ, c): what a scorer that ranks as
  well as labels allow on these features would gain;
* :func:`~mass_ref.lm.selection_rates`: how often the top-weighted attempt / the majority answer / the first
  attempt whose steps hold / any attempt is right, next to how often the greedy answer without an update is.

    python scripts/ch05_validation.py            # writes results/validation/05_label_free_selection.json (~5 min)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from mass_ref.config import load_config
from mass_ref.lm import (checked_only, practice_sets, right_only, scorer_auc, scorer_features, selection_rates,
                         task_problems, ttt_results)
from mass_ref.lm.experiment import SHIPPED_RUNS, load_trained_state
from mass_ref.lm.spec import load_lm_for_mass
from mass_ref.results import mean_ci95
from mass_ref.stats import roc_auc
from mass_ref.tasks.arithmetic import uses_held_out_combination

ROOT = Path(__file__).resolve().parents[1]


def fit_probe(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logistic regression on standardised statistics; returns (weights, mean, std)."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = (features - mean) / std
    w, b = torch.zeros(x.shape[1], requires_grad=True), torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=200)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), mean, std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-problems", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    config = load_config(ROOT / "configs" / "lm_mass_tiny.yaml")
    model, tokenizer, fmt = load_lm_for_mass(config.model, config.cache_dir, progress=False)
    hidden = model.config.hidden_size
    pool = task_problems(config.model.tiny, 20_000, split="train", seed=77_123)
    validation = [p for p in pool if uses_held_out_combination(p.skills)][:args.n_problems]
    seen = [p for p in pool if not uses_held_out_combination(p.skills) and len(p.skills) >= 2][:300]
    budget = dict(num_steps=1, inner_lr=config.mass.inner_lr, max_new_tokens=config.mass.answer_max_new_tokens)
    out: dict[str, object] = {"n_problems": len(validation), "seeds": args.seeds, "split": "train, held-out pairs"}
    for method in ("mass", "mass_gold"):
        rows: dict[str, list[float]] = {}
        extra: dict[str, list[float]] = {}
        for seed in args.seeds:
            scorer = load_trained_state(model, SHIPPED_RUNS / "tiny", method, seed, config.steps)

            def attempts(problems):
                return practice_sets(model, tokenizer, fmt, problems, m=config.evaluate.num_examples,
                                     temperature=config.mass.temperature, seed=seed, scorer=scorer, kind="self",
                                     max_new_tokens=config.mass.practice_max_new_tokens)

            train_sets, sets = attempts(seen), attempts(validation)
            stats = lambda s: scorer_features(model, tokenizer, s.examples, add_bos=fmt.add_bos)[:, hidden:]  # noqa: E731
            x = torch.cat([stats(s) for s in train_sets if s.examples])
            y = torch.tensor([float(bool(r)) for s in train_sets for r in s.right])
            w, mean, std = fit_probe(x, y)
            z = [((stats(s) - mean) / std) @ w if s.examples else None for s in sets]
            labels = torch.tensor([float(bool(r)) for s in sets for r in s.right])
            extra.setdefault("probe_auc", []).append(roc_auc(torch.cat([v for v in z if v is not None]), labels))
            extra.setdefault("scorer_auc", []).append(scorer_auc(sets))
            for key, value in selection_rates(sets).items():
                extra.setdefault(f"pick_{key}", []).append(value)
            base, _ = ttt_results(model, tokenizer, fmt, validation, None, **budget)
            extra.setdefault("greedy_no_update", []).append(statistics.fmean(base))
            examples = [s.examples for s in sets]
            variants = {"scorer": (examples, [s.weights for s in sets]), "uniform": (examples, None),
                        "oracle_right_only": right_only(sets), "checked_only": checked_only(sets)}
            for tau in (1.0, 0.25):
                for c in (1.0, 0.5):
                    variants[f"probe_tau{tau}_c{c}"] = (examples, [None if v is None else
                                                                   (c * torch.softmax(v / tau, 0)).tolist() for v in z])
            for name, (ex, weights) in variants.items():
                correct, _ = ttt_results(model, tokenizer, fmt, validation, ex, weights=weights, **budget)
                rows.setdefault(name, []).extend(float(a) - float(b) for a, b in zip(correct, base))
            print(method, seed, {k: round(v[-1], 3) for k, v in extra.items()}, flush=True)
        for name, diffs in rows.items():
            mean_diff, ci = mean_ci95(diffs)
            out[f"{method}_{name}_minus_no_update"], out[f"{method}_{name}_minus_no_update_ci95"] = mean_diff, ci
            print(f"{method:9s} {name:22s} − no update: {100 * mean_diff:+5.1f} ± {100 * ci:4.1f} pts")
        out.update({f"{method}_{k}": statistics.fmean(v) for k, v in extra.items()})
    path = ROOT / "results" / "validation" / "05_label_free_selection.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", path.relative_to(ROOT))


if __name__ == "__main__":
    main()
