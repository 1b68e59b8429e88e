"""A learner outside the checkout: the built wheel in a fresh venv runs every notebook's smoke profile.

As on Colab or after ``pip install mass-ref``: the notebooks are copied into an empty folder, nothing
of the repository is importable or readable (no ``MASS_REF_ROOT``, no ``PYTHONPATH``, another working
directory), and whatever a notebook reads at run time must come with the package. The venv gets the
wheel with its ``notebooks`` extra and the torch version running these tests (on Linux without an
NVIDIA driver from PyTorch's CPU index, as the Makefile does). About 6 minutes on 2 cores.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXECUTE = """
import sys, nbformat
from nbclient import NotebookClient
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": "."}}).execute()
nbformat.write(nb, path)
"""


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv holding the wheel built from this checkout (and its dependencies), nothing else."""
    base = tmp_path_factory.mktemp("outside")
    wheels = base / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("mass_ref-*.whl")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    cpu_index = (["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
                 if platform.system() == "Linux" and shutil.which("nvidia-smi") is None else [])
    torch_version = torch.__version__.split("+")[0]
    # torch alone from the CPU index (as the Makefile does: every package looked up on an index that cannot be
    # reached costs retries), then the wheel and its dependencies from the default index
    for args in ([f"torch=={torch_version}", *cpu_index], [f"{wheel}[notebooks]"]):
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                              timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
    return python


@pytest.mark.slow
def test_every_notebook_runs_its_smoke_profile_from_a_pip_installed_wheel(fresh_venv: Path, tmp_path: Path) -> None:
    folder = tmp_path / "learner"
    folder.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("MASS_REF_ROOT", "PYTHONPATH")}
    env.update(MASS_PROFILE="smoke", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    check = subprocess.run([str(fresh_venv), "-c", "import mass_ref, sys; print(mass_ref.__file__)"], cwd=folder,
                           env=env, capture_output=True, text=True, check=True)
    assert str(ROOT) not in check.stdout, f"the checkout leaked in: {check.stdout}"
    failures = {}
    for notebook in NOTEBOOKS:
        copy = folder / notebook.name
        shutil.copy(notebook, copy)
        done = subprocess.run([str(fresh_venv), "-c", EXECUTE, copy.name], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=1800)
        if done.returncode != 0:
            failures[notebook.name] = done.stderr[-2500:]
    assert not failures, failures
    written = {p.name for p in (folder / "results" / "smoke").glob("*.json")}
    assert written >= {f"{p.stem}.json" for p in NOTEBOOKS}, written  # results land where the learner runs them
