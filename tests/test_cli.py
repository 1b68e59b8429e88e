"""The command line: config validation (every bad field named), train/resume/evaluate, the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mass_ref.__main__ import main
from mass_ref.checkpoint import load_checkpoint
from mass_ref.config import ConfigError, load_config, parse_config
from mass_ref.lm.run_config import LMRunConfig
from mass_ref.toy.experiment import ToyRunConfig

ROOT = Path(__file__).resolve().parent.parent
SMOKE = yaml.safe_load((ROOT / "configs" / "toy_mass_smoke.yaml").read_text())


def with_field(dotted: str, value) -> dict:
    data = json.loads(json.dumps(SMOKE))
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()
BAD = [
    ("experiment", "maml", "experiment"),
    ("experiment", DELETE, "experiment"),
    ("output_dir", DELETE, "output_dir"),
    ("output_dir", "  ", "output_dir"),
    ("seed", -1, "seed"),
    ("seed", "zero", "seed"),
    ("steps", 0, "steps"),
    ("steps", 2.5, "steps"),
    ("checkpoint_every", 0, "checkpoint_every"),
    ("learning_rate", 0.1, "learning_rate"),
    ("base.learner_iterations", -5, "base.learner_iterations"),
    ("base.labeler_iterations", "many", "base.labeler_iterations"),
    ("base.depth", 3, "base.depth"),
    ("mass.outer_mode", "oracle", "outer_mode"),
    ("mass.num_synthetic", 1, "num_synthetic"),
    ("mass.inner_lr", -0.01, "inner_lr"),
    ("mass.backend", "jax", "backend"),
    ("mass.train_scorer", "yes", "mass.train_scorer"),
    ("mass.temperature", 1.0, "mass.temperature"),
    ("evaluate.n_problems", 0, "evaluate.n_problems"),
    ("mass.inner_lr", float("inf"), "mass.inner_lr must be a finite number"),
    ("mass.inner_lr", float("nan"), "mass.inner_lr must be a finite number"),
]


@pytest.mark.parametrize(("field", "value", "named"), BAD, ids=[f"{f}={v if v is not DELETE else 'missing'}" for f, v, _ in BAD])
def test_every_bad_field_is_named(field: str, value, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_config(with_field(field, value))


def test_bad_files_and_sections_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(["steps", 3])
    with pytest.raises(ConfigError, match="mass must be a mapping"):
        parse_config(with_field("mass", "gold"))


@pytest.mark.parametrize("written", ["1e-2", "1E-2", "1.0e-2", "0.01", "+1e-2", "10e-3", ".01"])
def test_every_way_of_writing_a_float_in_yaml_is_read_as_that_float(tmp_path: Path, written: str) -> None:
    text = (ROOT / "configs" / "toy_mass_smoke.yaml").read_text()
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("mass:\n", f"mass:\n  inner_lr: {written}\n", 1))
    assert load_config(path).mass.inner_lr == pytest.approx(0.01)


@pytest.mark.parametrize("written", [".inf", "-.inf", ".nan", "1e999"])
def test_non_finite_floats_in_yaml_are_refused_by_name(tmp_path: Path, written: str) -> None:
    text = (ROOT / "configs" / "toy_mass_smoke.yaml").read_text()
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("mass:\n", f"mass:\n  inner_lr: {written}\n", 1))
    with pytest.raises(ConfigError, match=r"mass\.inner_lr must be a finite number"):
        load_config(path)


def test_shipped_configs_are_valid() -> None:
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        config = load_config(path)
        assert isinstance(config, ToyRunConfig if path.name.startswith("toy_") else LMRunConfig), path
        # runs go under runs/, except the one config whose output is the package's shipped chapter-5 checkpoints
        shipped = path.name == "lm_mass_tiny.yaml"
        assert config.output_dir == "mass_ref/lm/metatrained/tiny" if shipped else config.output_dir.startswith("runs/")


def smoke_config(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SMOKE, "output_dir": str(tmp_path / name)}))
    return path


def final_state(run_dir: Path) -> dict:
    state = load_checkpoint(run_dir / "checkpoint.pt")
    return {"generator": state["generator"], "scorer": state["scorer"], "history": state["history"]}


def test_interrupted_training_resumes_to_the_same_final_state(tmp_path: Path) -> None:
    assert main(["train", "--config", str(smoke_config(tmp_path, "straight")), "--no-progress"]) == 0
    interrupted = smoke_config(tmp_path, "interrupted")
    assert main(["train", "--config", str(interrupted), "--no-progress", "--stop-after", "3"]) == 0
    assert len(load_checkpoint(tmp_path / "interrupted" / "checkpoint.pt")["history"]) == 3
    assert len((tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()) == 3
    assert main(["evaluate", "--config", str(interrupted)]) == 2  # not finished yet: refused, not evaluated
    assert main(["train", "--config", str(interrupted), "--no-progress"]) == 0
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "interrupted")
    assert a["history"] == b["history"]
    for part in ("generator", "scorer"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    lines = [json.loads(line) for line in (tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, SMOKE["steps"] + 1))


def test_a_folder_holding_another_run_is_refused(tmp_path: Path) -> None:
    config = smoke_config(tmp_path, "run")
    assert main(["train", "--config", str(config), "--no-progress", "--stop-after", "2"]) == 0
    changed = yaml.safe_load(config.read_text())
    changed["seed"] = 1
    config.write_text(yaml.safe_dump(changed))
    assert main(["train", "--config", str(config), "--no-progress"]) == 2


@pytest.mark.slow  # two child processes: ~20 s
def test_python_dash_m_trains_and_evaluates(tmp_path: Path) -> None:
    config = smoke_config(tmp_path, "cli")
    for command in ("train", "evaluate"):
        result = subprocess.run([sys.executable, "-m", "mass_ref", command, "--config", str(config), "--no-progress"],
                                capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "cli" / "eval.json").read_text())
    assert report["n_problems"] == SMOKE["evaluate"]["n_problems"]
    assert {"err_base", "err_tt_ss", "err_trained"} <= set(report)
    bad = subprocess.run([sys.executable, "-m", "mass_ref", "train", "--config", str(tmp_path / "nope.yaml")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_evaluate_refuses_a_config_other_than_the_trained_one(tmp_path: Path) -> None:
    config = smoke_config(tmp_path, "run")
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    changed = yaml.safe_load(config.read_text())
    changed["mass"]["inner_lr"] = 0.5
    config.write_text(yaml.safe_dump(changed))
    assert main(["evaluate", "--config", str(config)]) == 2
    assert not (tmp_path / "run" / "eval.json").exists()
