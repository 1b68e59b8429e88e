"""Write the results table of docs/grading.md: the verifier's verdicts on tests/grading_cases.py.

Usage (from the repository root)::

    python scripts/grading_table.py          # rewrite the table in docs/grading.md
    python scripts/grading_table.py --check  # exit 1 if the committed table is out of date

Only the block between the two ``grading-table`` markers is rewritten; the prose around it is
hand-written. tests/test_verify_cases.py checks that the committed block is what this prints.
Needs no pytest: the case list is a plain module.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # mass_ref and grading_cases without installing either

from grading_cases import CASES, CATEGORIES  # noqa: E402

from mass_ref.tasks.verify import is_correct  # noqa: E402

PAGE = ROOT / "docs" / "grading.md"
START, END = "<!-- grading-table:start -->", "<!-- grading-table:end -->"


def render_table() -> str:
    """The markdown table: per category, cases tried and cases the verifier grades right."""
    rows = ["| Category | Exercises | Cases | Graded right | Known limitations |", "|---|---|---:|---:|---:|"]
    total = right_total = known_total = 0
    for category, description in CATEGORIES.items():
        cases = [c for c in CASES if c.category == category]
        right = sum(is_correct(c.prediction, c.gold) == c.expected for c in cases)
        known = sum(c.known_failure for c in cases)
        rows.append(f"| `{category}` | {description} | {len(cases)} | {right} | {known} |")
        total, right_total, known_total = total + len(cases), right_total + right, known_total + known
    rows.append(f"| **all** | | **{total}** | **{right_total}** | **{known_total}** |")
    return "\n".join(rows) + "\n"


def replace_block(page: str, table: str) -> str:
    """``page`` with the text between the markers replaced by ``table``."""
    head, start, rest = page.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"{PAGE} must contain the markers {START} and {END}.")
    return f"{head}{START}\n{table}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that docs/grading.md is up to date")
    args = parser.parse_args(argv)
    page = PAGE.read_text(encoding="utf-8")
    updated = replace_block(page, render_table())
    if args.check:
        if updated != page:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python scripts/grading_table.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(updated, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
