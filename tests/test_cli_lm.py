"""The command line's LM experiment (``experiment: lm_mass``): every bad field named, resume, evaluate.

The smoke config's tiny LM is pretrained once per module into a tmp cache (about 8 s).
"""

from __future__ import annotations

import json
import os
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

ROOT = Path(__file__).resolve().parent.parent
SMOKE = yaml.safe_load((ROOT / "configs" / "lm_mass_smoke.yaml").read_text())
METHODS = SMOKE["methods"]


def with_field(dotted: str, value) -> dict:
    data = json.loads(json.dumps(SMOKE))
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return data


BAD = [  # (dotted field, bad value, what the message must name)
    ("epochs", 3, "epochs"),
    ("n_seeds", 0, "n_seeds"),
    ("n_seeds", True, "n_seeds"),
    ("steps", -3, "steps"),
    ("cache_dir", " ", "cache_dir"),
    ("cache_dir", 5, "cache_dir"),
    ("methods", [], "methods"),
    ("methods", "mass", "methods"),
    ("methods", ["mass", "maml"], r"methods\[1\]"),
    ("methods", ["mass", 3], r"methods\[1\]"),
    ("methods", ["mass", "mass"], r"methods\[1\]"),
    ("model", "tiny", "model"),
    ("model.name", "gpt2", r"model\.name"),
    ("model.depth", 2, r"model\.depth"),
    ("model.lora_rank", 0, r"model\.lora_rank"),
    ("model.lora_alpha", "big", r"model\.lora_alpha"),
    ("model.lora_targets", [], r"model\.lora_targets"),
    ("model.lora_targets", "q_proj", r"model\.lora_targets"),
    ("model.lora_targets", ["q_proj", "qproj"], r"model\.lora_targets\[1\]"),
    ("model.tiny.width", 8, r"model\.tiny\.width"),
    ("model.tiny.practice_fraction", 1.5, r"model\.tiny\.practice_fraction"),
    ("model.tiny.hidden_size", 33, r"model\.tiny\.hidden_size"),
    ("model.tiny.layers", 1.5, r"model\.tiny\.layers"),
    ("model.tiny.steps", True, r"model\.tiny\.steps"),
    ("model.tiny.number_range", [2, 9, 12], r"model\.tiny\.number_range"),
    ("model.tiny.number_range", [5, 3], r"model\.tiny\.number_range"),
    ("model.tiny.difficulties", [1], r"model\.tiny\.difficulties"),
    ("model.tiny.difficulties", [1, "two"], r"model\.tiny\.difficulties\[1\]"),
    ("model.tiny.max_value", 10, r"model\.tiny\.max_value"),
    ("mass.method", "solver_grpo", r"mass\.method"),
    ("mass.outer_mode", "verifier", r"mass\.outer_mode"),
    ("mass.inner_lr", -1.0, r"mass\.inner_lr"),
    ("mass.inner_lr", "fast", r"mass\.inner_lr"),
    ("mass.num_synthetic", 1, r"mass\.num_synthetic"),
    ("mass.meta_batch_size", True, r"mass\.meta_batch_size"),
    ("mass.train_scorer", 1, r"mass\.train_scorer"),
    ("mass.beta", 0.1, r"mass\.beta"),
    ("mass.meta_gradient", "adjoint", r"mass\.meta_gradient|mode must be one of"),
    ("mass.truncate", 1, r"truncate=1 only applies"),
    ("mass.per_problem_seeds", "yes", r"mass\.per_problem_seeds"),
    ("model.name", "hub", r"hub_id"),
    ("model.hub_id", "Qwen/Qwen2.5-0.5B-Instruct", r"hub_id"),
    ("model.dtype", "float16", r"model\.dtype"),
    ("model.device", "tpu", r"model\.device"),
    ("data.train", "math500", r"data\.train"),
    ("data.test", "aime", r"data\.test"),
    ("data.train_path", "x.jsonl", r"data\.train_path"),
    ("data.shuffle", True, r"data\.shuffle"),
    ("evaluate.n_problems", 0, r"evaluate\.n_problems"),
    ("evaluate.num_examples", 2.0, r"evaluate\.num_examples"),
    ("evaluate.budget", 3, r"evaluate\.budget"),
]


@pytest.mark.parametrize(("field", "value", "named"), BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_every_bad_field_is_named(field: str, value, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_config(with_field(field, value))


def test_a_bad_config_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**with_field("mass.inner_lr", 0), "output_dir": str(tmp_path / "run")}))
    assert main(["train", "--config", str(path), "--no-progress"]) == 2
    assert "mass.inner_lr must be positive" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_configs_parse_into_lm_run_configs_and_round_trip() -> None:
    for name in ("lm_mass_smoke", "lm_mass_tiny", "lm_mass_smollm2", "lm_mass_gpu", "lm_mass_gpu_t4", "lm_mass_gpu_smoke"):
        config = load_config(ROOT / "configs" / f"{name}.yaml")
        assert isinstance(config, LMRunConfig) and isinstance(config.model.tiny.number_range, tuple)
        assert config.seeds == tuple(range(config.seed, config.seed + config.n_seeds))
        recorded = yaml.safe_load(yaml.safe_dump(config.to_dict()))  # what config.yaml holds
        assert "method" not in recorded["mass"] and parse_config(recorded) == config


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lm_cache")


def smoke_config(folder: Path, name: str, cache: Path) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SMOKE, "output_dir": str(folder / name), "cache_dir": str(cache)}))
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """A smoke run trained without interruption (shared by the tests below)."""
    folder = tmp_path_factory.mktemp("straight")
    config = smoke_config(folder, "run", cache)
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    return config


def checkpoints(run_dir: Path) -> dict[str, dict]:
    return {path.name: load_checkpoint(path) for path in sorted(run_dir.glob("*_seed*.pt"))}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # the module's smoke runs: ~13 s
def test_interrupted_training_resumes_to_the_same_final_state(
    tmp_path: Path, cache: Path, straight: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = smoke_config(tmp_path, "run", cache)
    assert main(["train", "--config", str(config), "--no-progress", "--stop-after", "1"]) == 0
    assert [len(state["history"]) for state in checkpoints(tmp_path / "run").values()] == [1] * len(METHODS)
    assert [(row["method"], row["step"]) for row in metrics(tmp_path / "run")] == [(m, 1) for m in METHODS]

    capsys.readouterr()
    assert main(["evaluate", "--config", str(config)]) == 2  # unfinished: refused before any work
    error = capsys.readouterr().err
    assert "unfinished" in error and "run `train`" in error and "1/2" in error
    assert not (tmp_path / "run" / "eval.json").exists()

    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    resumed, uninterrupted = checkpoints(tmp_path / "run"), checkpoints(straight.parent / "run")
    assert sorted(resumed) == sorted(f"{m}_seed0.pt" for m in METHODS) == sorted(uninterrupted)
    for name, a in resumed.items():
        b = uninterrupted[name]
        assert json.dumps(a["history"]) == json.dumps(b["history"]) and len(a["history"]) == SMOKE["steps"]
        assert a["lora"].keys() == b["lora"].keys() and all(torch.equal(a["lora"][k], b["lora"][k]) for k in a["lora"])
        assert (a["scorer"] is None) == (b["scorer"] is None)
        if a["scorer"] is not None:
            assert all(torch.equal(a["scorer"][k], b["scorer"][k]) for k in a["scorer"])
    assert json.dumps(metrics(tmp_path / "run")) == json.dumps(metrics(straight.parent / "run"))  # NaN-safe
    assert [(row["method"], row["seed"], row["step"]) for row in metrics(tmp_path / "run")] == \
        [(m, 0, step) for m in METHODS for step in range(1, SMOKE["steps"] + 1)]


@pytest.mark.slow  # a child process evaluating every row: ~13 s
def test_python_dash_m_evaluates_every_row(straight: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mass_ref", "evaluate", "--config", str(straight), "--no-progress"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads((straight.parent / "run" / "eval.json").read_text())
    methods = ("base", "base_ttt", "tt_ss", "oracle_right_only", "related_gold", "solver_grpo", "mass_gold_no_update",
               "mass_gold_uniform", "mass_gold_oracle_right_only", "mass_gold", "mass_no_update", "mass_uniform",
               "mass_oracle_right_only", "mass")
    assert {f"acc_{m}{twin}" for m in methods for twin in ("", "_ci95")} <= set(report)
    assert {"acc_mass_minus_mass_no_update", "gold_loss_mass_minus_mass_uniform_ci95",
            "acc_mass_oracle_right_only_minus_mass_no_update_ci95"} <= set(report)
    assert report["n_problems"] == SMOKE["evaluate"]["n_problems"] and report["n_seeds"] == 1
    assert report["meta_steps"] == SMOKE["steps"]
    assert (report["precision"], report["device"], report["device_name"]) == ("fp32", "cpu", "cpu")  # "auto" on a CPU
    assert "precision fp32 on cpu" in result.stdout
    assert (straight.parent / "run" / "eval_seed0.json").is_file()
    assert all(m in result.stdout for m in methods)


@pytest.mark.slow  # two evaluations of every row: ~20 s
def test_an_evaluation_killed_between_rows_resumes_at_the_row_it_stopped_in(
        straight: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import mass_ref.lm.run_config as run_config

    if not (straight.parent / "run" / "eval_seed0.json").is_file():
        assert main(["evaluate", "--config", str(straight), "--no-progress"]) == 0
    shutil.copytree(straight.parent / "run", tmp_path / "run", ignore=shutil.ignore_patterns("eval*.json"))
    config = smoke_config(tmp_path, "run", cache)
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())  # the same run, in another folder
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({**recorded, "output_dir": str(tmp_path / "run")}))
    evaluate, ran = run_config.evaluate_lm_methods, []

    def killed_after_three_rows(*args, on_row, **kwargs):
        def row_done(row: str, result: dict) -> None:
            on_row(row, result)
            ran.append(row)
            if len(ran) == 3:
                raise KeyboardInterrupt  # as a killed process would stop, after the third row was stored
        return evaluate(*args, on_row=row_done, **kwargs)

    monkeypatch.setattr(run_config, "evaluate_lm_methods", killed_after_three_rows)
    with pytest.raises(KeyboardInterrupt):
        main(["evaluate", "--config", str(config), "--no-progress"])
    partial = json.loads((tmp_path / "run" / "eval_seed0.partial.json").read_text())
    assert list(partial) == ran and not (tmp_path / "run" / "eval_seed0.json").exists()

    resumed_rows: list[str] = []
    monkeypatch.setattr(run_config, "evaluate_lm_methods",
                        lambda *a, on_row, **k: evaluate(*a, on_row=lambda r, x: (resumed_rows.append(r), on_row(r, x)),
                                                         **k))
    assert main(["evaluate", "--config", str(config), "--no-progress"]) == 0
    uninterrupted = (straight.parent / "run" / "eval_seed0.json").read_text()
    assert set(resumed_rows).isdisjoint(ran) and sorted(resumed_rows + ran) == sorted(json.loads(uninterrupted))
    assert (tmp_path / "run" / "eval_seed0.json").read_text() == uninterrupted  # every answer and loss, NaN AUCs too
    assert not (tmp_path / "run" / "eval_seed0.partial.json").exists()


@pytest.mark.slow  # two child processes: ~20 s
def test_gpu_config_code_path_trains_and_evaluates_on_gsm8k_fixtures(tmp_path: Path) -> None:
    """configs/lm_mass_gpu_smoke.yaml: from_pretrained of a folder, GSM8K-format data, bf16 autocast, checkpointing."""
    data = yaml.safe_load((ROOT / "configs" / "lm_mass_gpu_smoke.yaml").read_text())
    data.update(output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), methods=["mass"])
    config = tmp_path / "gpu_smoke.yaml"
    config.write_text(yaml.safe_dump(data))
    gpu = load_config(ROOT / "configs" / "lm_mass_gpu.yaml")
    smoke = load_config(config)
    assert (gpu.mass.meta_gradient, gpu.mass.precision, gpu.mass.gradient_checkpointing, gpu.data.train) == \
        (smoke.mass.meta_gradient, smoke.mass.precision, smoke.mass.gradient_checkpointing, smoke.data.train)
    for command in ("train", "evaluate"):
        result = subprocess.run([sys.executable, "-m", "mass_ref", command, "--config", str(config), "--no-progress"],
                                capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["n_problems"] == data["evaluate"]["n_problems"] and "acc_mass" in report


def _gpu_smoke_with(tmp_path: Path, **changes: object) -> Path:
    """configs/lm_mass_gpu_smoke.yaml with dotted ``changes`` (``data__train_path`` = ``data.train_path``)."""
    data = yaml.safe_load((ROOT / "configs" / "lm_mass_gpu_smoke.yaml").read_text())
    data.update(output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    for dotted, value in changes.items():
        section, _, name = dotted.partition("__")
        if name:
            data[section][name] = value
        else:
            data[section] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


ROW = '{"question": "What is 2 + 3?", "answer": "2 + 3 = 5.\\n#### 5"}\n'
BAD_INPUTS = {  # name -> (changes given tmp_path, words the one-line message must hold)
    "missing train file": (lambda d: {"data__train_path": str(d / "nope.jsonl")}, ["data.train_path", "does not exist"]),
    "empty train file": (lambda d: {"data__train_path": _write(d / "empty.jsonl", "")}, ["data.train_path", "no records"]),
    "row without ####": (lambda d: {"data__train_path": _write(d / "bad.jsonl", ROW + ROW.replace("#### 5", "5"))},
                         ["data.train_path", "#### N", "record 1"]),
    "broken JSON line": (lambda d: {"data__train_path": _write(d / "broken.jsonl", ROW + "{oops\n")},
                         ["data.train_path", "line 2", "not valid JSON"]),
    "train pool < meta-batch": (lambda d: {"data__train_path": _write(d / "one.jsonl", ROW)},
                                ["data.train_path", "holds 1 gsm8k problems", "meta_batch_size"]),
    "test pool < n_problems": (lambda d: {"evaluate__n_problems": 50}, ["data.test_path", "holds 5", "evaluate.n_problems"]),
    "model folder missing": (lambda d: {"model__hub_id": str(d / "no_model")}, ["model.hub_id", "neither a folder"]),
    "output_dir under a file": (lambda d: {"output_dir": str(Path(_write(d / "file", "x")) / "run")},
                                ["output_dir", "is a file"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_data_model_or_folder_fails_before_any_work_with_one_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    changes, words = BAD_INPUTS[case]
    config = _gpu_smoke_with(tmp_path, **changes(tmp_path))
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and all(w in err for w in words), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # no work was done


def test_a_second_lm_train_on_a_folder_in_use_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mass_ref.run_folder import run_lock

    config = _gpu_smoke_with(tmp_path)
    with run_lock(tmp_path / "run"):  # as if another `train` were running on this folder
        assert main(["train", "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.lock" in err and str(os.getpid()) in err, err
    assert not list((tmp_path / "run").glob("*.pt"))  # refused before any training


def test_a_hub_id_that_cannot_be_loaded_is_one_message_naming_the_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine without network, at once
    config = _gpu_smoke_with(tmp_path, model__hub_id="no-such-owner/no-such-model-xyz")
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.hub_id 'no-such-owner/no-such-model-xyz' could not be loaded") and \
        err.count("\n") == 1, err
    assert not list((tmp_path / "run").glob("*.pt"))
