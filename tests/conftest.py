"""Fixtures shared by the unit tests in tests/.

- ``tokenizer``: the small BPE tokenizer of the arithmetic corpus (vocab 280) used by
  test_lm_models.py, test_lm_ttt.py and test_lm_generate.py. Each of these modules used to train
  the very same one (same corpus, same vocab size); it is now trained once per session. No test or
  ``mass_ref`` function mutates it. (test_lm_sft.py keeps its own ``tokenizer()`` helper: its test
  bodies call it directly, it is not a fixture.)
- ``smoke_tiny_lm_cache``: a cache folder holding the smoke profile's tiny LM
  (``TinyLMSpec(**SMOKE_TINY_LM)``), pretrained (or copied from the shipped model) once per session
  for test_lm_metagrad.py and test_lm_mass.py. It is the folder, not the model, that is shared:
  each module still loads its own fresh ``(model, tokenizer, info)`` with ``pretrained_tiny_lm``
  (which always reloads from the cache), because test_lm_metagrad.py casts its model to float64 in
  place and wraps it with LoRA.

The ``slow`` marker is registered in pyproject.toml; slow unit tests carry it in their own module
(``pytestmark`` or a decorator). Notebook cells collected by nbval are marked slow by the
repository-root conftest.py, which, unlike this file, also applies to items collected from
notebooks/ when pytest is pointed at that folder alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mass_ref.lm import TinyLMSpec, pretrained_tiny_lm, train_tokenizer
from mass_ref.profiles import SMOKE_TINY_LM

ARITHMETIC_CORPUS = [f"Question: What is {a} + {b}?\nAnswer: {a + b}" for a in range(12) for b in range(12)]
"""The ``CORPUS`` of test_lm_models.py, test_lm_ttt.py, test_lm_generate.py (and test_lm_sft.py)."""


@pytest.fixture(scope="session")
def tokenizer():
    """The BPE tokenizer of :data:`ARITHMETIC_CORPUS`, vocab 280, trained once per session."""
    return train_tokenizer(ARITHMETIC_CORPUS, vocab_size=280)


@pytest.fixture(scope="session")
def smoke_tiny_lm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache root holding the smoke profile's tiny LM, pretrained once per session.

    Load it with ``pretrained_tiny_lm(TinyLMSpec(**SMOKE_TINY_LM), smoke_tiny_lm_cache)``: every call
    returns a fresh model read from this folder, so modules cannot see each other's changes.
    """
    cache = tmp_path_factory.mktemp("cache")
    pretrained_tiny_lm(TinyLMSpec(**SMOKE_TINY_LM), cache, progress=False)
    return cache
