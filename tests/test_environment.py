"""pyproject.toml and environment.yml list the same dependencies; the set-up stays two commands."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    from_pyproject = sorted(project["dependencies"] + extras["notebooks"] + extras["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip_section) == from_pyproject, "environment.yml and pyproject.toml have drifted apart"
    assert "python=3.11" in env["dependencies"]


def test_torch_is_a_lower_bound_in_metadata_and_pinned_in_the_makefile() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch>=2.2" in deps  # Colab keeps its own torch
    assert re.search(r"^TORCH_VERSION\s*\?=\s*2\.13\.0$", (ROOT / "Makefile").read_text(), re.M)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^```(?:bash|sh)\n(.*?)```", readme, re.S | re.M)
    setup = [line for block in commands[:1] for line in block.splitlines() if line and not line.startswith("#")]
    assert setup == ["make run", "make test"], f"README's set-up block should be two commands, got {setup}"
    assert "\nmake test\n" in (ROOT / ".ci" / "run").read_text()
