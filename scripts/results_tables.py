"""The tables the docs Results page shows per chapter, as templates over ``results/<profile>/<stem>.json``.

A template is text in which ``{key}`` or ``{key:spec}`` stands for the JSON value under ``key``, shown with
``format(value, spec)``; a spec ending in ``pt`` shows a fraction in percentage points, fixed-point (``{d:+.0pt}``
of 0.05 is ``+5``). Keys may contain dots (``two_step_first_order_rel_err_lr0.01``), so this is not ``str.format``.
The tables of
chapters 1, 3 and 5 are the README's, row for row; for the chapters the README tells in bullets (2, 4, 6) a table
holds the numbers those bullets quote, and chapter 7's holds its rows. A key the JSON lacks is an error naming the key
and the file, never a blank cell. ``scripts/mkdocs_hooks.py`` uses :func:`render_tables`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)(?::([^{}]*))?\}")


class ResultsKeyError(LookupError):
    """A template quotes a key that the results file does not hold (or holds a value its format cannot show)."""


def fill(template: str, data: Mapping[str, object], source: str) -> str:
    """``template`` with every ``{key:spec}`` replaced by ``data[key]`` formatted; ``source`` names the file in errors.

    >>> fill("{a:.2f} ± {a_ci95:.2f} ({n} tasks, {p:+.0pt} points)", {"a": 0.5, "a_ci95": 0.04, "n": 10, "p": 0.05},
    ...      "results/cpu/x.json")
    '0.50 ± 0.04 (10 tasks, +5 points)'
    """
    def one(match: re.Match[str]) -> str:
        key, spec = match.group(1), match.group(2) or ""
        if key not in data:
            raise ResultsKeyError(f"{source} has no key {key!r}, which the docs Results page quotes "
                                  "(scripts/results_tables.py): rerun the notebook or fix the table spec")
        value: Any = data[key]
        try:
            return format(value * 100, spec[:-2] + "f") if spec.endswith("pt") else format(value, spec)
        except (TypeError, ValueError) as error:
            raise ResultsKeyError(f"{source}: {key} = {value!r} cannot be shown as {spec!r} ({error})") from error

    return PLACEHOLDER.sub(one, template)


@dataclass(frozen=True)
class Table:
    """One markdown table: a header and rows of cell templates, an optional caption above it.

    ``label_column`` says the first column names the row (its text may hold digits typed by hand, such as
    "K = 10"); every other cell shows numbers only through placeholders.
    """

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""
    label_column: bool = True

    def render(self, data: Mapping[str, object], source: str) -> str:
        """The caption and the table as markdown, every placeholder filled from ``data``."""
        def line(cells: tuple[str, ...]) -> str:
            return "| " + " | ".join(fill(cell, data, source).replace("|", r"\|") for cell in cells) + " |"

        table = [line(self.header), "|" + "---|" * len(self.header), *(line(row) for row in self.rows)]
        return "\n".join(([fill(self.caption, data, source), ""] if self.caption else []) + table)


def ci(key: str, spec: str = ".3f", ci_spec: str | None = None) -> str:
    """A value and its 95% interval, ``{key} ± {key_ci95}``; the interval as ``ci_spec``, else as ``spec`` unsigned."""
    return f"{{{key}:{spec}}} ± {{{key}_ci95:{ci_spec or spec.lstrip('+')}}}"


# row labels of chapters 5 and 7, in the README's order
METHOD_LABELS: dict[str, str] = {
    "base": "Base", "base_ttt": "Base TTT", "tt_ss": "TT-SS",
    "oracle_right_only": "oracle right-only (ceiling)", "checked_only": "TT-SS, steps-check rule",
    "related_gold": "related gold (ceiling)",
    "solver_grpo": "Solver GRPO",
    "mass_gold_no_update": "MASS_gold, no update", "mass_gold_uniform": "MASS_gold, uniform weights",
    "mass_gold_oracle_right_only": "MASS_gold, oracle right-only (ceiling)",
    "mass_gold_checked_only": "MASS_gold, steps-check rule", "mass_gold": "MASS_gold",
    "mass_no_update": "MASS, no update", "mass_uniform": "MASS, uniform weights",
    "mass_oracle_right_only": "MASS, oracle right-only (ceiling)", "mass_checked_only": "MASS, steps-check rule",
    "mass": "MASS",
}

# chapter 5's paired differences: (a, b, what a − b isolates)
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("oracle_right_only", "tt_ss", "the room: best weighting of TT-SS's own attempts"),
    ("mass", "tt_ss", "MASS against TT-SS"),
    ("mass", "mass_no_update", "MASS's test-time update, same trained weights"),
    ("mass_oracle_right_only", "mass_no_update", "the room for that update: the right attempts only"),
    ("mass", "mass_uniform", "MASS's scorer, same weights and attempts"),
    ("mass_checked_only", "mass_no_update", "a fixed label-free rule's update: the attempts whose steps hold"),
    ("mass", "mass_checked_only", "the learned scorer over that fixed rule"),
    ("mass_no_update", "base", "what MASS's meta-training did to the solver"),
    ("mass_gold", "tt_ss", "MASS_gold against TT-SS"),
    ("mass_gold", "mass_gold_no_update", "MASS_gold's update"),
    ("mass_gold_oracle_right_only", "mass_gold_no_update", "the room for MASS_gold's update"),
    ("mass_gold", "mass_gold_uniform", "MASS_gold's scorer"),
    ("mass_gold_no_update", "base", "what MASS_gold's meta-training did to the solver"),
)

TOY_METHODS: dict[str, str] = {
    "base": "Base", "base_ttt": "Base TTT", "tt_ss": "TT-SS", "scorer_only": "scorer only",
    "generator_only": "generator only", "mass_gold": "MASS_gold", "mass": "MASS (verifier)",
}


def _method_rows(prefix: str, methods: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Accuracy ± CI and gold loss after the update, one row per method (keys ``{prefix}acc_<method>`` ...)."""
    return tuple((METHOD_LABELS[m], ci(f"{prefix}acc_{m}", ".2f"), f"{{{prefix}gold_loss_{m}:.3f}}") for m in methods)


def _lm_tables(prefix: str, caption: str) -> tuple[Table, Table]:
    """Chapter 5's two tables (every row, then the paired differences) over keys ``{prefix}acc_<row>`` ...."""
    return (Table(caption=caption, header=("row", "accuracy", "gold loss after the update"),
                  rows=_method_rows(prefix, tuple(METHOD_LABELS))),
            Table(caption="Paired differences per problem, ± 95% CI:",
                  header=("paired difference", "accuracy", "gold loss", "isolates"),
                  rows=tuple((f"{a} − {b}", ci(f"{prefix}acc_{a}_minus_{b}", "+.2f"),
                              ci(f"{prefix}gold_loss_{a}_minus_{b}", "+.3f"), what) for a, b, what in PAIRS)))


# quantity rows that chapter 5's tiny LM and the SmolLM2 run share
def _related_room_row(prefix: str) -> tuple[str, str]:
    return ("related practice: oracle right-only − TT-SS, both on related problems",
            ci(f"{prefix}acc_oracle_right_only_related_minus_tt_ss_related", "+.2f"))


def _scorer_auc_row(prefix: str) -> tuple[str, str]:
    return ("scorer AUC, right vs wrong attempts: MASS / MASS_gold",
            f"{{{prefix}scorer_auc_mass:.2f}} / {{{prefix}scorer_auc_mass_gold:.2f}}")


TABLES: dict[str, tuple[Table, ...]] = {
    "01_maml_sine": (
        Table(
            caption="{meta_iterations:,} meta-iterations; {n_eval_tasks} held-out tasks per K; query MSE ± 95% CI.",
            header=("K = 10, query MSE", "after 1 step", "after 10 steps"),
            rows=(("MAML (α = 0.01)", ci("maml_mse_k10_step1"), ci("maml_mse_k10_step10")),
                  ("first-order MAML", ci("fomaml_mse_k10_step1"), "{fomaml_mse_k10_step10:.3f}"),
                  ("pretrained on all tasks (step size tuned: {pretrained_inner_lr:g})",
                   ci("pretrained_mse_k10_step1"), ci("pretrained_mse_k10_step10")),
                  ("oracle (told A and φ)", "{oracle_mse:.3f}", "{oracle_mse:.3f}"))),
        Table(header=("check", "value"),
              rows=(("`torch.func` `vmap` meta-gradient vs higher's per-task loop, largest difference (float64)",
                     "{meta_grad_max_abs_diff_higher_vs_vmap:.0e}"),
                    ("speed-up of the `vmap` meta-gradient over the loop",
                     "{speedup_func_vmap_vs_higher_loop:.0f}×"))),
    ),
    "02_metagradients_through_data": (
        Table(caption="A MAML learner as in chapter 1 ({meta_iterations:,} meta-iterations, K = {k_shot}, "
                      "α = {inner_lr:g}).",
              header=("quantity", "value"),
              rows=(("∂L/∂w_i vs central finite differences, largest relative error "
                     "({attribution_fd_n_tasks} tasks)",
                     "{attribution_fd_max_rel_err:.1e}"),
                    ("∂L/∂w_i by hand vs the `higher` backend, largest difference",
                     "{attribution_backend_max_abs_diff:g}"),
                    ("Spearman with leave-one-out re-adaptation, per task ({attribution_loo_n_tasks} tasks, one step)",
                     ci("attribution_loo_spearman")),
                    ("… with 40 support points", "{attribution_loo_spearman_n40:.3f}"),
                    ("second inner step at α = 0.01: first-order vs exact attribution, relative error (Spearman)",
                     "{two_step_first_order_rel_err_lr0.01:.3f} ({two_step_first_order_spearman_lr0.01:.3f})"),
                    ("… α·λ_max (median)", "{alpha_times_top_hessian_eigenvalue_median:.2f}"),
                    ("… relative error at α = 0.001", "{two_step_first_order_rel_err_lr0.001:.3f}"),
                    ("{corrupted_fraction:.0%} corrupted labels flagged, ROC AUC through "
                     "{corrupted_detection_inner_steps} inner steps / one step ({corrupted_n_tasks:,} tasks)",
                     "{corrupted_detection_auc:.3f} / {corrupted_detection_auc_1step:.3f}"),
                    ("test MSE: keep all / drop the two most harmful per task / drop the corrupted ones",
                     "{cleaning_test_mse_keep_all:.3f} / {cleaning_test_mse_drop_most_harmful:.3f} / "
                     "{cleaning_test_mse_drop_corrupted:.3f}"),
                    ("held-out query MSE after one step on {distill_points} learned points vs {distill_points} "
                     "random real points", f"{ci('distilled_query_mse')} vs {ci('random_real_query_mse')}"),
                    ("… ratio (tasks where the learned points do better)",
                     "{distilled_vs_random_query_mse_ratio:.3f} ({distilled_beats_random_fraction:.0%})"),
                    ("… one step on all the real points they were fitted to", "{all_target_points_query_mse:.3f}"))),
    ),
    "03_mass_toy": (
        Table(caption="Mean |error| at x* over {n_seeds} seeds × {n_problems} held-out problems, 95% CIs; "
                      "{meta_steps} meta-steps.",
              header=tuple(TOY_METHODS.values()),
              rows=(tuple(ci(f"err_{m}") for m in TOY_METHODS),), label_column=False),
        Table(header=("quantity", "value"),
              rows=(("MASS's error over TT-SS's (target ≤ 0.7)", "{mass_over_tt_ss:.2f}×"),
                    ("MASS_gold's error over TT-SS's", "{mass_gold_over_tt_ss:.2f}×"),
                    ("scorer only: correlation between weight and label error",
                     "{scorer_weight_label_error_corr:.2f}"))),
    ),
    "04_lm_test_time_training": (
        Table(caption="A {tiny_lm_parameters:,}-parameter Llama, LoRA ({lora_parameters:,} parameters); "
                      "{n_test_problems} held-out problems; 95% CIs, Δ paired per problem.",
              header=("one SGD step (α = {inner_lr:g}) on m = {num_examples} …", "gold-solution loss", "Δ loss",
                      "accuracy", "Δ accuracy (points)"),
              rows=(("no step (Base)", "{gold_loss_base:.3f}", "", "{acc_base_held_out:.2f}", ""),
                    ("related problems with gold solutions (oracle)", "{gold_loss_related:.3f}",
                     ci("d_gold_loss_related", "+.3f"), "{acc_ttt_related:.2f}",
                     ci("d_acc_related", "+.0pt", ".1pt")),
                    ("random training problems", "{gold_loss_random:.3f}", ci("d_gold_loss_random", "+.3f"),
                     "{acc_ttt_random:.2f}", ci("d_acc_random", "+.0pt", ".1pt")),
                    ("the model's own practice problems", "{gold_loss_self:.3f}", ci("d_gold_loss_self", "+.3f"),
                     "{acc_ttt_self:.2f}", ci("d_acc_self", "+.0pt", ".1pt")))),
        Table(header=("quantity", "value"),
              rows=(("greedy accuracy: train-like problems / held-out combinations",
                     "{acc_base_train_like:.2f} / {acc_base_held_out:.2f}"),
                    ("LoRA weight meta-gradients (one and two inner steps) vs float64 finite differences, "
                     "largest relative error", "{fd_max_rel_err:.1e}"),
                    ("the model's own practice: right answer / the target's skills",
                     "{practice_right_rate:.0%} / {practice_same_skills_rate:.0%}"))),
    ),
    "05_mass_llm": (
        *_lm_tables("tiny_", "Tiny LM; {tiny_n_problems} held-out problems over {tiny_n_seeds} seeds, {meta_steps} "
                    "meta-steps per method and seed; mean ± 95% CI."),
        Table(header=("quantity", "value"),
              rows=(_related_room_row("tiny_"),
                    ("Solver GRPO − TT-SS (no practice at all)", ci("tiny_acc_solver_grpo_minus_tt_ss", "+.2f")),
                    _scorer_auc_row("tiny_"),
                    ("targets met", "{tiny_targets_met}"),
                    ("meta-step time over a LoRA SFT step: tiny LM / SmolLM2-135M",
                     "{tiny_meta_step_over_sft_step_time_ratio:.1f}× / "
                     "{smollm2_meta_step_over_sft_step_time_ratio:.1f}×"))),
        Table(caption="SmolLM2-135M-Instruct, untrained rows only ({smollm2_n_problems} problems, {smollm2_n_seeds} "
                      "seed); not yet measured: {smollm2_methods_not_run}.",
              header=("row", "accuracy", "gold loss after the update"),
              rows=tuple((METHOD_LABELS[m], f"{{smollm2_acc_{m}:.2f}}", f"{{smollm2_gold_loss_{m}:.3f}}")
                         for m in ("base", "base_ttt", "tt_ss"))),
    ),
    "06_scalable_metagradients": (
        Table(caption="Memory is the peak a meta-gradient adds, measured in a fresh process.",
              header=("quantity", "value"),
              rows=(("exact modes, largest relative disagreement (float64)", "{max_rel_err_efficient_vs_full:.1e}"),
                    ("checkpointed over unroll peak memory at K = 4: tiny LM / SmolLM2-135M",
                     "{peak_mem_ratio_efficient_vs_full_steps4:.2f}× / "
                     "{smollm2_peak_mem_ratio_efficient_vs_full_steps4:.2f}×"),
                    ("peak-memory growth from K = 1 to 8 (tiny LM): checkpointed / unroll",
                     "{peak_mem_growth_steps1_to_8_checkpointed:.2f}× / {peak_mem_growth_steps1_to_8_unroll:.1f}×"),
                    ("cosine of first-order with exact attributions at K = 2 / 8",
                     "{cos_first_order_vs_exact_steps2:.3f} / {cos_first_order_vs_exact_steps8:.2f}"),
                    ("MASS_gold accuracy at K = 2, exact / first-order meta-gradients ({n_eval_problems} problems)",
                     "{acc_mass_gold_exact:.2f} / {acc_mass_gold_first_order:.2f}"),
                    ("… drop with first-order", "{acc_drop_first_order:.2f} ± {acc_drop_first_order_ci95:.3f}"))),
    ),
    # SmolLM2-135M-Instruct trained and evaluated by the command line: configs/lm_mass_smollm2.yaml's eval.json
    "lm_mass_smollm2": (
        *_lm_tables("", "SmolLM2-135M-Instruct; {n_problems} held-out problems, {n_seeds} seed, {meta_steps} "
                        "meta-steps per method; mean ± 95% CI."),
        Table(header=("quantity", "value"),
              rows=(("TT-SS on related problems the model wrote (paper's practice)", ci("acc_tt_ss_related", ".2f")),
                    _related_room_row(""),
                    ("related gold (ceiling) − TT-SS: accuracy / gold loss",
                     f"{ci('acc_related_gold_minus_tt_ss', '+.2f')} / {ci('gold_loss_related_gold_minus_tt_ss', '+.3f')}"),
                    _scorer_auc_row(""))),
    ),
    "07_mass_gpu": (
        Table(caption="Device {device}, model `{model}`, {train_data} → {test_data}, {n_problems} problems, "
                      "{meta_steps} meta-steps; peak memory {peak_memory_gb:.2f} GB; mean ± 95% CI.",
              header=("row", "accuracy", "gold loss after the update"),
              rows=_method_rows("", tuple(m for m in METHOD_LABELS if m != "related_gold"))),
    ),
}


def render_tables(stem: str, data: Mapping[str, object], source: str) -> str:
    """Every table of ``stem``'s chapter as markdown, blank-line separated; empty when no table is specified."""
    return "\n\n".join(table.render(data, source) for table in TABLES.get(stem, ()))
