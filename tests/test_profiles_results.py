"""Profiles, seeds, results files and confidence intervals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mass_ref import (
    LARGE_CARD_GIB,
    MamlSineSizes,
    load_results,
    mean_ci95,
    profile_sizes,
    resolve_profile,
    sample_sine_tasks,
    save_results,
    seed_everything,
)


def test_resolve_profile_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASS_PROFILE", "smoke")
    assert resolve_profile() == "smoke"
    monkeypatch.setenv("MASS_PROFILE", "auto")
    assert resolve_profile() == ("gpu" if torch.cuda.is_available() else "cpu")
    assert resolve_profile("CPU") == "cpu"  # an explicit argument wins and is case-insensitive


def test_unknown_profile_is_named_with_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASS_PROFILE", "laptop")
    with pytest.raises(ValueError, match=r"'laptop'.*smoke"):
        resolve_profile()


def test_gpu_profile_from_the_environment_is_refused_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("MASS_PROFILE", "gpu")
    with pytest.raises(ValueError, match=r"MASS_PROFILE=gpu needs a CUDA GPU.*MASS_PROFILE=cpu"):
        resolve_profile()
    assert resolve_profile("gpu") == "gpu"  # naming the gpu sizes on a laptop is fine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_profile() == "gpu"


def test_chapter_7_picks_its_config_by_the_cards_memory() -> None:
    sizes = profile_sizes("07_mass_gpu", "gpu")
    assert sizes.config_for_card(79.2) == sizes.config_for_card(LARGE_CARD_GIB) == "configs/lm_mass_gpu.yaml"
    assert sizes.config_for_card(14.7) == sizes.config_for_card(39.4) == sizes.config_for_card(44.4) \
        == "configs/lm_mass_gpu_t4.yaml"
    assert sizes.config_for_card(None) == "configs/lm_mass_gpu.yaml"
    assert profile_sizes("07_mass_gpu", "smoke").config_for_card(15.0) == "configs/lm_mass_gpu_smoke.yaml"


def test_profile_sizes_grow_from_smoke_to_gpu() -> None:
    smoke, cpu, gpu = (profile_sizes("01_maml_sine", p) for p in ("smoke", "cpu", "gpu"))
    assert isinstance(cpu, MamlSineSizes)
    assert smoke.meta_iterations < cpu.meta_iterations <= gpu.meta_iterations
    assert cpu.n_eval_tasks >= 100  # the chapter's CIs are over at least 100 held-out tasks
    with pytest.raises(ValueError, match="no sizes"):
        profile_sizes("99_missing")


def test_same_seed_same_numbers() -> None:
    a = sample_sine_tasks(4, 5, 5, generator=seed_everything(7))
    b = sample_sine_tasks(4, 5, 5, generator=seed_everything(7))
    c = sample_sine_tasks(4, 5, 5, generator=seed_everything(8))
    assert torch.equal(a.y_query, b.y_query) and not torch.equal(a.y_query, c.y_query)
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_sine_tasks_follow_the_paper_ranges() -> None:
    tasks = sample_sine_tasks(2000, 10, 3, generator=seed_everything(0))
    assert 0.1 <= tasks.amplitude.min() and tasks.amplitude.max() <= 5.0
    assert 0.0 <= tasks.phase.min() and tasks.phase.max() <= math.pi
    assert -5.0 <= tasks.x_support.min() and tasks.x_support.max() <= 5.0
    expected = tasks.amplitude[:, None, None] * torch.sin(tasks.x_support - tasks.phase[:, None, None])
    assert torch.allclose(tasks.y_support, expected)
    assert tasks.x_support.shape == (2000, 10, 1) and len(tasks[3:5]) == 2
    with pytest.raises(ValueError, match="k_support"):
        sample_sine_tasks(2, 0, 3, generator=seed_everything(0))


def test_save_results_writes_flat_json(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASS_REF_ROOT", str(tmp_path))
    path = save_results("00_demo", {"mse": 0.5, "n": 3, "profile": "smoke"}, profile="smoke")
    assert path == tmp_path / "results" / "smoke" / "00_demo.json"
    assert json.loads(path.read_text()) == {"mse": 0.5, "n": 3, "profile": "smoke"}
    assert load_results("00_demo", "smoke")["n"] == 3
    with pytest.raises(ValueError, match="'nested'"):
        save_results("00_demo", {"nested": {"a": 1}}, profile="smoke")
    with pytest.raises(ValueError, match="'bad'"):
        save_results("00_demo", {"bad": float("nan")}, profile="smoke")


def test_mean_ci95_matches_the_t_interval() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0])
    mean, half = mean_ci95(values)
    assert mean == 2.5
    assert half == pytest.approx(3.182446305284263 * values.std(ddof=1) / 2.0)  # t_{0.975, 3} = 3.1824
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci95([1.0])


def test_run_directory_changes_with_the_settings_only() -> None:
    from mass_ref import run_directory

    a = run_directory("06_x", "cpu", "exact", {"m": 12}, 16)
    assert a == run_directory("06_x", "cpu", "exact", {"m": 12}, 16)
    assert a != run_directory("06_x", "cpu", "exact", {"m": 6}, 16) and a.parent.name == "cpu"
    assert a.name.startswith("exact-") and a.parts[-5:-2] == ("build", "runs", "06_x")


@pytest.mark.parametrize(("profile", "words"), [("bogus", "unknown profile 'bogus' (from $MASS_PROFILE)"),
                                                 ("gpu", "MASS_PROFILE=gpu needs a CUDA GPU")])
def test_make_run_with_a_bad_profile_prints_one_line_and_exits_2(profile: str, words: str) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "MASS_PROFILE": profile, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "scripts/run_notebooks.py"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and words in done.stderr


def test_progress_bars_are_off_under_tqdm_disable_even_when_a_caller_asks_for_one(monkeypatch, capsys) -> None:
    from mass_ref.progress import progress_bar, progress_enabled

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_enabled(True) and not progress_enabled(False)
    list(progress_bar(range(3), desc="shown", mininterval=0))
    assert "shown" in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")  # what scripts/run_notebooks.py sets for stored outputs
    list(progress_bar(range(3), enabled=True, desc="hidden"))
    assert not progress_enabled(True) and "hidden" not in capsys.readouterr().err


def test_the_runtimes_notebooks_announce_match_the_committed_cpu_runs() -> None:
    import json
    from pathlib import Path

    from mass_ref.profiles import RUNTIME_MINUTES

    root = Path(__file__).resolve().parent.parent
    notebooks = sorted(p.stem for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(RUNTIME_MINUTES) == notebooks
    for notebook in notebooks:
        results = json.loads((root / "results" / "cpu" / f"{notebook}.json").read_text())
        measured = results["runtime_seconds"] / 60 if "runtime_seconds" in results else results["runtime_minutes"]
        stated = RUNTIME_MINUTES[notebook]["cpu"]
        assert measured / 2 <= stated <= max(2 * measured, 0.5), (notebook, stated, measured)
