"""The docs Results page: per chapter, the README's tables from results/cpu/*.json, the raw keys only collapsed.

The page's markdown is built here with the mkdocs hook's own function (no site build): ``scripts/mkdocs_hooks.py``
expands ``{{ results:… }}`` with the table specs of ``scripts/results_tables.py``.
"""

from __future__ import annotations

import doctest
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import markdown
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import mkdocs_hooks  # noqa: E402
import results_tables  # noqa: E402

CHAPTERS = ("01", "02", "03", "04", "05", "06", "07")
DETAILS = re.compile(r"<details.*?</details>", re.S)
RAW_ROW = re.compile(r"^\| `[\w.]+` \| [^|]* \|$", re.M)
FIGURE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def _page(root: Path = ROOT) -> str:
    return mkdocs_hooks.expand((ROOT / "docs" / "results.md").read_text(), root)


def _quoted_files() -> int:
    """How many ``{{ results:… }}`` placeholders docs/results.md has (a chapter may quote more than one file)."""
    return len(mkdocs_hooks.RESULTS.findall((ROOT / "docs" / "results.md").read_text()))


def _sections(page: str) -> dict[str, str]:
    """The page's ``## NN · …`` sections by chapter number."""
    parts = re.split(r"^## (\d\d) · .*$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text`` (outside ``<details>``), as rows of stripped cells, separator row dropped."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*DETAILS.sub("", text).splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(re.fullmatch(r"-+", cell) for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def _copy_results(tmp_path: Path) -> Path:
    """A repository root under ``tmp_path`` holding a copy of results/cpu/."""
    shutil.copytree(ROOT / "results" / "cpu", tmp_path / "results" / "cpu")
    return tmp_path


def _perturbed(value: Any) -> Any:
    """Another value of the same kind: every shown digit differs from the original's rendering."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value + 0.5 + abs(value) if isinstance(value, float) else value + 7  # moves by 0.5 or more
    if isinstance(value, str):
        return re.sub(r"\d", lambda d: str((int(d.group()) + 1) % 10), value)
    return value


def test_every_chapter_has_a_table_and_all_its_keys_collapsed() -> None:
    sections = _sections(_page())
    assert sorted(sections) == list(CHAPTERS)
    for chapter, text in sections.items():
        quoted = text.split("From `results/cpu/", 1)[-1].split("<details", 1)[0]  # the chapter's own tables
        assert _tables(quoted), f"chapter {chapter} shows no table from its results JSON"
        stems = re.findall(r"<code>results/cpu/([\w.-]+)\.json</code></summary>", text)
        assert stems and stems[0].startswith(chapter), f"chapter {chapter} has no collapsed list of its keys"
        data = json.loads((ROOT / "results" / "cpu" / f"{stems[0]}.json").read_text())
        details = "".join(DETAILS.findall(text))
        assert all(f"| `{key}` |" in details for key in data), f"chapter {chapter}: a key is missing from <details>"


def test_no_raw_dump_outside_the_details_blocks() -> None:
    page = _page()
    assert RAW_ROW.search(page), "the check itself: the raw rows exist inside <details>"
    outside = DETAILS.sub("", page)
    assert not RAW_ROW.search(outside) and "| key | value |" not in outside
    quoted_files = _quoted_files()
    assert page.count("<details") == page.count("</details>") == quoted_files >= len(CHAPTERS)


def test_the_readmes_results_tables_are_on_the_page() -> None:
    readme = (ROOT / "README.md").read_text()
    results = readme.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    expected = _tables(results)
    assert len(expected) >= 4, "the README's Results section should hold chapters 1, 3 and 5's tables"
    shown = _tables(_page())
    for table in expected:
        assert table in shown, f"README table not on the docs Results page (or its numbers differ):\n{table}"


def test_every_number_shown_is_the_jsons_formatted() -> None:
    """Each placeholder's value, formatted independently of the hook, sits in the cell that quotes it."""
    checked = 0
    for stem, tables in results_tables.TABLES.items():
        source = f"results/cpu/{stem}.json"
        data = json.loads((ROOT / source).read_text())
        for table in tables:
            for template_row, shown_row in zip(table.rows, _tables(table.render(data, source))[0][1:], strict=True):
                for column, (template, cell) in enumerate(zip(template_row, shown_row, strict=True)):
                    if column or not table.label_column:  # no digit typed by hand in a value cell
                        assert not re.search(r"\d", results_tables.PLACEHOLDER.sub("", template)), (stem, template)
                    for key, spec in results_tables.PLACEHOLDER.findall(template):
                        value = data[key]
                        text = f"{value * 100:{spec[:-2]}f}" if spec.endswith("pt") else f"{value:{spec}}"
                        assert text in cell, f"{source}: {key} = {value!r} shown as {cell!r}, not {text!r}"
                        checked += 1
    assert checked > 150
    page = _page()
    maml = json.loads((ROOT / "results" / "cpu" / "01_maml_sine.json").read_text())
    assert (f"| MAML (α = 0.01) | {maml['maml_mse_k10_step1']:.3f} ± {maml['maml_mse_k10_step1_ci95']:.3f} | "
            f"{maml['maml_mse_k10_step10']:.3f} ± {maml['maml_mse_k10_step10_ci95']:.3f} |") in page
    ttt = json.loads((ROOT / "results" / "cpu" / "04_lm_test_time_training.json").read_text())
    assert (f"| {ttt['gold_loss_related']:.3f} | {ttt['d_gold_loss_related']:+.3f} ± "
            f"{ttt['d_gold_loss_related_ci95']:.3f} | {ttt['acc_ttt_related']:.2f} | "
            f"{100 * ttt['d_acc_related']:+.0f} ± {100 * ttt['d_acc_related_ci95']:.1f} |") in page


def test_every_digit_in_a_table_follows_the_json(tmp_path: Path) -> None:
    """Change every number in the results: every value cell that shows a digit changes with it."""
    root = _copy_results(tmp_path)
    for path in (root / "results" / "cpu").glob("*.json"):
        path.write_text(json.dumps({k: _perturbed(v) for k, v in json.loads(path.read_text()).items()}))
    for stem, tables in results_tables.TABLES.items():
        before = _tables(mkdocs_hooks.render_results("cpu", stem, ROOT))
        after = _tables(mkdocs_hooks.render_results("cpu", stem, root))
        assert len(before) == len(after) == len(tables)
        for table, old, new in zip(tables, before, after, strict=True):
            for old_row, new_row in zip(old[1:], new[1:], strict=True):
                for column, (a, b) in enumerate(zip(old_row, new_row, strict=True)):
                    if (column or not table.label_column) and re.search(r"\d", a):
                        assert a != b, f"{stem}: {a!r} did not follow the JSON"


def test_a_missing_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    root = _copy_results(tmp_path)
    path = root / "results" / "cpu" / "05_mass_llm.json"
    data = json.loads(path.read_text())
    del data["tiny_acc_mass_ci95"]
    path.write_text(json.dumps(data))
    with pytest.raises(results_tables.ResultsKeyError, match=r"results/cpu/05_mass_llm\.json.*'tiny_acc_mass_ci95'"):
        mkdocs_hooks.render_results("cpu", "05_mass_llm", root)
    with pytest.raises(results_tables.ResultsKeyError, match="tiny_targets_met = 'x' cannot be shown as '.2f'"):
        results_tables.fill("{tiny_targets_met:.2f}", {"tiny_targets_met": "x"}, "results/cpu/05_mass_llm.json")
    with pytest.raises(FileNotFoundError, match="06_scalable_metagradients.json"):
        mkdocs_hooks.render_results("cpu", "06_scalable_metagradients", tmp_path / "elsewhere")


def test_every_figure_the_page_shows_exists() -> None:
    sections = _sections(_page())
    for chapter, text in sections.items():
        figures = FIGURE.findall(text)
        assert figures, f"chapter {chapter} shows no figure"
        for figure in figures:
            assert (ROOT / "docs" / figure).is_file(), f"chapter {chapter}: {figure} does not exist"
            assert figure.startswith(f"figures/cpu/{chapter}_"), figure


def test_the_tables_render_as_html_tables() -> None:
    """Converted with the site's extensions: a <table> per table, folded keys in <details>, no stray `|` text."""
    html = markdown.markdown(_page(), extensions=["tables", "md_in_html", "admonition"])
    quoted_files = _quoted_files()
    assert html.count("<table>") == len(_tables(_page())) + quoted_files  # + one per collapsed key list
    assert html.count("<details>") == quoted_files and "markdown=" not in html
    stray = [line for line in re.sub(r"<[^>]+>", "\n", html).splitlines() if line.strip().startswith("|")]
    assert not stray, stray[:3]


def test_the_table_specs_doctest() -> None:
    assert doctest.testmod(results_tables).failed == 0


def test_the_readme_smollm2_block_is_the_rendering_of_its_results_file() -> None:
    """The README's SmolLM2 command-line tables are exactly what results/cpu/lm_mass_smollm2.json renders to."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- smollm2-cli:start -->\n(.*?)\n<!-- smollm2-cli:end -->", readme, re.S)
    assert block is not None, "README.md lost its <!-- smollm2-cli:start/end --> markers"
    data = json.loads((ROOT / "results" / "cpu" / "lm_mass_smollm2.json").read_text())
    assert block.group(1) == results_tables.render_tables("lm_mass_smollm2", data, "results/cpu/lm_mass_smollm2.json")
