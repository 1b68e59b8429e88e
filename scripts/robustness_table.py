"""Run the bad-input, fault and grading tests and write their table to docs/robustness.md.

    python scripts/robustness_table.py           # runs the tests (slow ones included, ~2 min), rewrites the page
    python scripts/robustness_table.py --check   # exit 1 when the page's case counts differ from the test suite's

Each category is a set of test-name patterns; every collected test of the files below that matches one
counts as a case tried, and its outcome as passed or not. tests/test_notebooks_and_docs.py runs ``--check``'s
count (collection only) so the committed page cannot fall behind the tests.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "robustness.md"
FILES = ("tests/test_cli.py", "tests/test_cli_lm.py", "tests/test_profiles_results.py", "tests/test_kernel.py",
         "tests/test_faults.py", "tests/test_lm_shipped.py", "tests/test_verify.py", "tests/test_verify_cases.py")
CATEGORIES: dict[str, tuple[str, str]] = {  # name -> (what it checks, a regex over "file::test")
    "config values": ("bad fields, numbers as users write them in YAML, non-finite values: one message naming the field",
                      r"test_cli(_lm)?\.py::test_(every_bad_field|every_way_of_writing_a_float|non_finite_floats|"
                      r"bad_files_and_sections|a_bad_config_fails)"),
    "data, model, folders": ("missing/empty/broken data files, rows without #### N, short pools, missing model "
                             "folder, unwritable output: named before the model loads",
                             r"test_cli(_lm)?\.py::test_(bad_data_model_or_folder|a_folder_holding_another_run|"
                             r"evaluate_refuses)"),
    "profiles": ("a bad or unavailable MASS_PROFILE: one line, exit 2",
                 r"test_profiles_results\.py::test_(make_run_with_a_bad_profile|unknown_profile|gpu_profile_from)"),
    "non-finite values": ("NaN/inf/non-positive rates and weights refused; a diverging inner loop names its step",
                          r"(test_kernel\.py::test_(a_diverging|the_kernel_locates|nan_)|test_faults\.py::test_("
                          r"a_toy_config_with_a_huge|the_toy_trainer_names|test_time_training_refuses|diverging_))"),
    "checkpoints": ("a damaged, truncated or missing newest checkpoint: resume from the previous one, or one clear error",
                    r"test_faults\.py::test_(each_save_keeps|a_damaged|a_run_resumes_past|no_readable|a_missing_newest)"),
    "writes": ("disk full, failed writes, interrupted result and figure saves: the previous file intact, no temp left",
               r"test_faults\.py::test_(disk_full|a_failing_file_write|a_run_stopped_by_a_full_disk|temporary_files|"
               r"stale_temporaries|an_interrupted_results|a_figure_save|save_figure)"),
    "concurrent runs": ("two trainers on one folder, a stale lock, processes filling one model cache at once",
                        r"(test_faults\.py::test_(a_second_writer|the_toy_train_command_refuses|a_lock_left|"
                        r"two_train_processes)|test_cli_lm\.py::test_a_second_lm_train|"
                        r"test_lm_shipped\.py::test_processes_filling)"),
    "kill and rerun": ("kill -9 (or a stop) at any point, then the same command: the uninterrupted final state",
                       r"(test_faults\.py::test_\w+_killed_with_sigkill|test_cli(_lm)?\.py::"
                       r"test_interrupted_training_resumes)"),
    "grading": ("GSM8K and MATH-500 answers graded as their standard graders do (docs/grading.md)",
                r"test_verify(_cases)?\.py::"),
}


class _Outcomes:
    """A pytest plugin that records each test's outcome (its call phase, or a failed setup) by node id."""

    def __init__(self) -> None:
        self.passed: dict[str, bool] = {}
        self.collected: list[str] = []

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.collected = [item.nodeid for item in items]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.passed[report.nodeid] = report.passed


def category_of(nodeid: str) -> str | None:
    """The category whose pattern matches ``file::test`` (parameters stripped), or None."""
    name = nodeid.split("[")[0].removeprefix("tests/")
    return next((c for c, (_, pattern) in CATEGORIES.items() if re.search(pattern, name)), None)


def run(collect_only: bool) -> dict[str, list[bool | None]]:
    """Outcomes per category (None: collected, not run)."""
    outcomes = _Outcomes()
    args = [*FILES, "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--no-header", "-m", ""]
    code = pytest.main([*args, "--collect-only"] if collect_only else args, plugins=[outcomes])
    if code not in (0, 1):
        raise SystemExit(f"pytest could not run the tests (exit {code})")
    table: dict[str, list[bool | None]] = {c: [] for c in CATEGORIES}
    for nodeid in outcomes.collected:
        category = category_of(nodeid)
        if category is not None:
            table[category].append(outcomes.passed.get(nodeid))
    return table


def page(table: dict[str, list[bool | None]]) -> str:
    rows = [f"| {c} | {CATEGORIES[c][0]} | {len(r)} | {sum(bool(x) for x in r)} |" for c, r in table.items()]
    total = sum(len(r) for r in table.values()), sum(bool(x) for r in table.values() for x in r)
    return "\n".join([
        "# Bad input, faults and grading",
        "",
        "Every case below is a test in `tests/`; this table is written by `python scripts/robustness_table.py`,",
        "which runs them (a test checks that the counts here match the test suite).",
        "",
        "| category | what is checked | cases tried | cases passing |",
        "|---|---|---:|---:|",
        *rows,
        f"| **all** | | **{total[0]}** | **{total[1]}** |",
        "",
    ])


def tried_counts(text: str) -> dict[str, int]:
    """Category → "cases tried" as a page states it."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| ([^|*]+?) \| [^|]* \| (\d+) \|", text, re.M)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare the page's counts with the collected tests")
    args = parser.parse_args()
    if args.check:
        expected = {c: len(r) for c, r in run(collect_only=True).items()}
        stated = tried_counts(PAGE.read_text()) if PAGE.is_file() else {}
        if stated != expected:
            print(f"{PAGE.relative_to(ROOT)} is stale: it states {stated}, the tests hold {expected}; run "
                  "python scripts/robustness_table.py", file=sys.stderr)
            return 1
        return 0
    table = run(collect_only=False)
    PAGE.write_text(page(table))
    print(page(table))
    return 0 if all(all(r) for r in table.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
