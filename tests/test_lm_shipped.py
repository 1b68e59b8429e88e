"""The cpu profile's tiny LM ships with the package: it matches the spec, loads by the cache path, never pretrains."""

from __future__ import annotations

import dataclasses
import json

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
