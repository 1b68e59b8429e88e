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


def _torch_install_line(path: str) -> str:
    import os
    import subprocess

    done = subprocess.run(["make", "-n", "-B", ".venv/.installed"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PATH": path}, check=True)
    return next(line for line in done.stdout.splitlines() if '"torch==' in line)


def test_make_installs_the_cpu_torch_wheel_on_linux_without_nvidia_and_the_default_one_with_it(tmp_path: Path) -> None:
    import os
    import platform
    import shutil

    assert platform.system() == "Linux", "this test checks the Linux rule; see the Makefile for macOS/Windows"
    plain = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "nvidia-smi").exists())
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in _torch_install_line(plain)
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    assert shutil.which("make")
    assert "download.pytorch.org" not in _torch_install_line(f"{tmp_path}{os.pathsep}{plain}")
