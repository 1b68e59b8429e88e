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
    documented = set(re.findall(r"^::: mass_ref\.[\w.]*\.(\w+)$", api, re.M))
    assert set(mass_ref.__all__) <= documented, f"undocumented: {sorted(set(mass_ref.__all__) - documented)}"


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
    assert "maml_mse_k10_step1" in (tmp_path / "site" / "results" / "index.html").read_text()


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
