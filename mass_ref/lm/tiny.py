"""The tiny arithmetic LM: one spec, pretrained once on CPU and cached with ``save_pretrained``.

:class:`TinyLMSpec` fixes everything that decides the model: the task family (numbers,
difficulties), the corpus (training problems, share of practice documents), the tokenizer, the
architecture and the pretraining run. :func:`pretrained_tiny_lm` trains it (tokenizer with
``tokenizers``, ``LlamaForCausalLM`` with next-token Adam, :func:`~mass_ref.lm.models.pretrain_lm`),
saves it with :func:`~mass_ref.lm.models.save_lm` into ``cache_root/<spec hash>`` and reloads it
with ``from_pretrained``: exactly the path a hub model takes. A second call with the same spec
only loads (the cache is keyed by every field, so a changed spec never reuses a stale model).

The default spec's model (the cpu profile's) also ships inside the package, saved by that same
code (``scripts/ship_tiny_lm.py``): CPU pretraining is deterministic only for a fixed thread
count (float sums are split differently across threads, and 1,500 Adam steps amplify the last
bit into a different model), so shipping it gives every machine the chapters' exact model, and
saves the 6–12 minutes of pretraining.

Introduced in notebooks/04_lm_test_time_training.ipynb.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mass_ref.lm.formats import pretraining_corpus
from mass_ref.lm.models import build_tiny_lm, load_lm, pretrain_lm, save_lm
from mass_ref.lm.tokenizer import train_tokenizer
from mass_ref.tasks.arithmetic import ArithmeticProblem, sample_arithmetic_problems

__all__ = ["TinyLMSpec", "pretrained_tiny_lm", "task_problems"]

_DONE = "pretraining.json"
SHIPPED_ROOT = Path(__file__).parent / "pretrained"
"""Pretrained tiny LMs that ship with the package, one folder per :meth:`TinyLMSpec.key`."""


@dataclass(frozen=True)
class TinyLMSpec:
    """Everything that determines the tiny LM (defaults: the cpu profile, ≈ 1.1M parameters).

    Attributes:
        number_range, max_value, difficulties: the arithmetic task family
            (see :func:`~mass_ref.tasks.arithmetic.sample_arithmetic_problems`).
        n_train_problems: training problems in the corpus (seed ``seed``, split "train").
        practice_fraction: share of problems that also get a practice ("similar problem") document.
        vocab_size: BPE vocabulary size (a small corpus may stop below it).
        hidden_size, layers, heads: the Llama architecture.
        steps, batch_size, lr: next-token Adam pretraining.
        seed: corpus, initialisation and batch order.
    """

    number_range: tuple[int, int] = (2, 9)
    max_value: int = 60
    difficulties: tuple[int, ...] = (1, 2)
    n_train_problems: int = 4000
    practice_fraction: float = 0.5
    vocab_size: int = 800
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        # lists (from JSON/YAML) become tuples, so equal specs compare and hash equal
        object.__setattr__(self, "number_range", tuple(self.number_range))
        object.__setattr__(self, "difficulties", tuple(self.difficulties))
        for name in ("n_train_problems", "vocab_size", "hidden_size", "layers", "heads", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TinyLMSpec.{name} must be a positive integer; got {value!r}.")
        if self.hidden_size % self.heads:
            raise ValueError(f"TinyLMSpec.hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads}).")
        if not self.lr > 0:
            raise ValueError(f"TinyLMSpec.lr must be positive; got {self.lr!r}.")

    def key(self) -> str:
        """A short hash of every field: the cache folder's name."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def task_problems(spec: TinyLMSpec, n: int, *, split: str, seed: int) -> list[ArithmeticProblem]:
    """``n`` problems of the spec's task family (same numbers and difficulties as pretraining).

    Use seeds other than ``spec.seed`` with split "train" for meta-training problems that the
    model has not memorised; split "test" always combines a held-out skill pair.
    """
    return sample_arithmetic_problems(n, seed, split, number_range=tuple(spec.number_range),
                                      max_value=spec.max_value, difficulties=tuple(spec.difficulties))


def pretrained_tiny_lm(
    spec: TinyLMSpec, cache_root: str | Path, *, progress: bool = True, use_shipped: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load the tiny LM of ``spec`` from ``cache_root/<spec.key()>``, pretraining it first if needed.

    If the cache lacks it and the package ships a model for this spec (:data:`SHIPPED_ROOT`), that
    folder is copied into the cache instead of pretraining (``use_shipped=False`` pretrains anyway).

    Returns:
        ``(model, tokenizer, info)``: the model loaded with ``from_pretrained`` (eager attention,
        eval mode), its tokenizer, and ``info`` with the pretraining record (``spec``,
        ``parameters``, ``loss_first``, ``loss_last``, ``losses``, ``seconds``).
    """
    directory = Path(cache_root) / spec.key()
    done = directory / _DONE
    if not done.is_file():
        # Built in a folder of this process and thread, then renamed into place complete: processes
        # that fill one cache at once (data-parallel ranks, parallel tests) never see half a folder.
        partial = directory.with_name(f"{directory.name}.{os.getpid()}.{threading.get_ident()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shipped = SHIPPED_ROOT / spec.key()
        if use_shipped and (shipped / _DONE).is_file():
            shutil.copytree(shipped, partial)
        else:
            _pretrain_into(spec, partial, progress=progress)
        _publish(partial, directory)
    model, tokenizer = load_lm(directory)
    return model, tokenizer, json.loads(done.read_text())


def _publish(partial: Path, directory: Path) -> None:
    """Rename the complete folder ``partial`` to ``directory``; if another process got there first, keep theirs."""
    if directory.exists() and not (directory / _DONE).is_file():  # left by a run killed before this was atomic
        shutil.rmtree(directory, ignore_errors=True)
    try:
        partial.rename(directory)
    except OSError:
        if not (directory / _DONE).is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)  # the same model, already in place


def _pretrain_into(spec: TinyLMSpec, directory: Path, *, progress: bool) -> None:
    """Tokenizer, model, pretraining and ``save_pretrained`` into ``directory``; the record is written last."""
    problems = task_problems(spec, spec.n_train_problems, split="train", seed=spec.seed)
    corpus = pretraining_corpus(problems, practice_fraction=spec.practice_fraction, seed=spec.seed)
    tokenizer = train_tokenizer(corpus, vocab_size=spec.vocab_size)
    model = build_tiny_lm(tokenizer, hidden_size=spec.hidden_size, layers=spec.layers, heads=spec.heads,
                          seed=spec.seed)
    with torch.random.fork_rng(devices=[]):
        start = time.perf_counter()
        losses = pretrain_lm(model, tokenizer, corpus, steps=spec.steps, batch_size=spec.batch_size,
                             lr=spec.lr, seed=spec.seed, add_bos=True, progress=progress)
        seconds = time.perf_counter() - start
    save_lm(model, tokenizer, directory)
    info = {"spec": dataclasses.asdict(spec), "parameters": sum(p.numel() for p in model.parameters()),
            "corpus_texts": len(corpus), "loss_first": losses[0], "loss_last": losses[-1],
            "losses": losses, "seconds": seconds,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}  # the result depends on both
    (directory / _DONE).write_text(json.dumps(info) + "\n")  # written last: marks a complete folder
