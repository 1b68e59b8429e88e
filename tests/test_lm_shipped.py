"""The cpu profile's tiny LM ships with the package: it matches the spec, loads by the cache path, never pretrains."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import mass_ref.lm.tiny as tiny
from mass_ref.lm import TinyLMSpec, pretrained_tiny_lm


def test_a_model_ships_for_the_default_spec_and_records_how_it_was_made() -> None:
    spec = TinyLMSpec()
    folder = tiny.SHIPPED_ROOT / spec.key()
    assert (folder / "pretraining.json").is_file(), \
        f"no shipped model for TinyLMSpec() (key {spec.key()}): run `python scripts/ship_tiny_lm.py`"
    record = json.loads((folder / "pretraining.json").read_text())
    assert record["spec"] == json.loads(json.dumps(dataclasses.asdict(spec)))  # tuples read back as lists
    assert len(record["losses"]) == spec.steps and record["loss_last"] < 0.5 < record["loss_first"]
    assert record["torch_threads"] >= 1 and record["torch"]


def test_the_shipped_model_is_copied_into_the_cache_instead_of_pretraining(tmp_path, monkeypatch) -> None:
    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretrain_lm was called although the package ships this model")

    monkeypatch.setattr(tiny, "pretrain_lm", no_pretraining)
    model, tokenizer, info = pretrained_tiny_lm(TinyLMSpec(), tmp_path, progress=False)
    assert (tmp_path / TinyLMSpec().key() / "model.safetensors").is_file()
    assert not (tmp_path / f"{TinyLMSpec().key()}.partial").exists()
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    ids = tokenizer("Question: Sam has 3 apples.", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()
    # use_shipped=False takes the pretraining path (stopped here by the patch)
    with pytest.raises(AssertionError, match="pretrain_lm was called"):
        pretrained_tiny_lm(TinyLMSpec(), tmp_path / "fresh", progress=False, use_shipped=False)


def test_the_shipped_meta_training_is_used_and_resumes_as_finished(tmp_path, monkeypatch) -> None:
    """The chapter-5 checkpoints (``configs/lm_mass_tiny.yaml``, written before checkpoints recorded the fingerprint
    of their starting models) still load: all are used for the shipped model, and each resumes as finished."""
    import mass_ref.lm.trainer as trainer
    from mass_ref.config import load_config
    from mass_ref.lm import SHIPPED_RUNS, load_lm_for_mass, train_lm_methods, use_shipped_runs

    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "lm_mass_tiny.yaml")
    model, tokenizer, fmt = load_lm_for_mass(config.model, tmp_path / "cache", progress=False)
    run = dict(methods=config.methods, seeds=config.seeds, steps=config.steps, output_dir=tmp_path / "run")
    copied = use_shipped_runs(model, config.mass, shipped_dir=SHIPPED_RUNS / "tiny", **run)
    assert sorted(copied) == sorted(f"{m}_seed{s}.pt" for m in config.methods for s in config.seeds)

    def no_step(*args, **kwargs):
        raise AssertionError("a training step ran although the shipped runs are finished")

    monkeypatch.setattr(trainer, "lm_meta_step", no_step)
    monkeypatch.setattr(trainer, "solver_grpo_step", no_step)
    histories = train_lm_methods(model, tokenizer, fmt, config.mass, config.model.tiny, progress=False, **run)
    assert [len(h) for per_seed in histories.values() for h in per_seed.values()] == [config.steps] * len(copied)



CHILD = """
import shutil, sys, time
from mass_ref.lm import TinyLMSpec, pretrained_tiny_lm
copytree = shutil.copytree
def slow_copytree(*args, **kwargs):  # a slow disk: the copy overlaps the other processes' copies
    result = copytree(*args, **kwargs)
    time.sleep(1.0)
    return result
shutil.copytree = slow_copytree
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together
model, _, info = pretrained_tiny_lm(TinyLMSpec(), sys.argv[1], progress=False)
print(sum(float(p.double().sum()) for p in model.parameters()), info["loss_last"])
"""


@pytest.mark.slow  # four child processes
def test_processes_filling_one_cache_at_once_all_get_the_complete_model(tmp_path) -> None:
    """Data-parallel ranks and parallel test workers copy the shipped model into one cache at the same time."""
    import os
    import subprocess
    import sys
    import time

    at = str(time.time() + 8)  # after every child has imported torch and transformers
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), at], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    outputs = [child.communicate(timeout=120) for child in children]
    assert all(child.returncode == 0 for child in children), [err[-2000:] for _, err in outputs]
    assert len({out for out, _ in outputs}) == 1  # the same model in every process
    assert sorted(p.name for p in tmp_path.iterdir()) == [TinyLMSpec().key()]  # no partial folder left behind
