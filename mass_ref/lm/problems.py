"""Where an LM experiment's problems come from: the tiny LM's task family, or GSM8K / MATH-500.

Every trainer and evaluator reads problems through a :class:`ProblemSource`: ``train(n, seed)``
draws n training problems, ``test(n, seed)`` gives n held-out ones. A problem is anything with
``question``, ``solution`` (the gold worked solution, ending in its final answer) and ``answer``
(what the verifier compares against): :class:`~mass_ref.tasks.arithmetic.ArithmeticProblem` or
:class:`TextProblem`.

==========  =====================================================  =================================
name        training problems                                      held-out problems
==========  =====================================================  =================================
``tiny``    ``task_problems(spec, n, split="train", seed=seed)``   the same with ``split="test"``
``gsm8k``   n distinct draws (by ``seed``) from GSM8K train        the first n of GSM8K test
``math500`` (evaluation only)                                      the first n of MATH-500
==========  =====================================================  =================================

Benchmarks load from the hub by name (``datasets``), or from a local copy in the hub's format
(``train_path``/``test_path``, e.g. the repository's offline fixtures). Held-out benchmark
problems are the standard fixed prefix, the same for every seed.

Introduced in notebooks/07_mass_gpu.ipynb.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from mass_ref.config import input_path
from mass_ref.lm.tiny import TinyLMSpec, task_problems
from mass_ref.tasks.benchmarks import load_gsm8k, load_math500

__all__ = ["LMDataSpec", "ProblemSource", "TextProblem", "text_problems"]

TRAIN_SOURCES = ("tiny", "gsm8k")
TEST_SOURCES = ("tiny", "gsm8k", "math500")
_CALCULATOR = re.compile(r"<<[^>]*>>")


@dataclass(frozen=True)
class TextProblem:
    """A benchmark problem. Attributes: question; solution (worked, gold); answer (the final answer)."""

    question: str
    solution: str
    answer: str


def text_problems(records: list[dict[str, Any]]) -> list[TextProblem]:
    """Benchmark records (:mod:`mass_ref.tasks.benchmarks`) as problems.

    GSM8K's ``<<48/2=24>>`` calculator annotations are removed from the solutions (the model is
    trained to write plain steps ending ``#### N``, which the verifier reads).
    """
    return [TextProblem(r["question"], _CALCULATOR.sub("", r["answer"]), str(r["final_answer"])) for r in records]


@dataclass(frozen=True)
class LMDataSpec:
    """The experiment's problems (module table).

    Attributes:
        train: "tiny" or "gsm8k".
        test: "tiny", "gsm8k" or "math500".
        train_path, test_path: local copies of the benchmark in the hub's format ("": the hub).
    """

    train: str = "tiny"
    test: str = "tiny"
    train_path: str = ""
    test_path: str = ""

    def __post_init__(self) -> None:
        if self.train not in TRAIN_SOURCES:
            raise ValueError(f"train must be one of {TRAIN_SOURCES}; got {self.train!r}.")
        if self.test not in TEST_SOURCES:
            raise ValueError(f"test must be one of {TEST_SOURCES}; got {self.test!r}.")
        for name, source in (("train_path", self.train), ("test_path", self.test)):
            if getattr(self, name) and source == "tiny":
                raise ValueError(f"{name} is for a benchmark; the tiny task family is generated, so leave it empty.")


@dataclass
class ProblemSource:
    """Draws the problems ``data`` names; benchmarks are read once, on first use."""

    data: LMDataSpec = field(default_factory=LMDataSpec)
    tiny: TinyLMSpec = field(default_factory=TinyLMSpec)

    def check(self, *, train_problems: int, test_problems: int) -> None:
        """Read the benchmark files now and check they hold enough problems, before any model loads.

        Args:
            train_problems: problems one training step draws (the meta-batch); 0: no training.
            test_problems: held-out problems the evaluation needs; 0: no evaluation.

        Raises:
            ValueError: naming the config field (``data.train_path``/``data.test_path``), the file and
                the bad record or the shortfall, and the fix.
        """
        for name, source, path, needed, records in (
                ("train", self.data.train, self.data.train_path, train_problems, lambda: self._train_records),
                ("test", self.data.test, self.data.test_path, test_problems, lambda: self._test_records)):
            if needed == 0 or source == "tiny":
                continue
            field_name = f"data.{name}_path"
            try:
                pool = len(records())
            except (ValueError, OSError) as error:
                raise ValueError(f"{field_name} ({path or 'the hub'}): {error}") from error
            if pool < needed:
                fix = "meta_batch_size" if name == "train" else "evaluate.n_problems"
                raise ValueError(f"{field_name} ({path or 'the hub'}) holds {pool} {source} problems, but the run needs "
                                 f"{needed} per {'step' if name == 'train' else 'evaluation'}; lower {fix} or use a "
                                 "larger file.")

    def train(self, n: int, seed: int) -> list[Any]:
        """n training problems drawn by ``seed`` (benchmarks: distinct, at most all of them)."""
        if self.data.train == "tiny":
            return task_problems(self.tiny, n, split="train", seed=seed)
        return random.Random(seed).sample(self._train_records, min(n, len(self._train_records)))

    def test(self, n: int, seed: int) -> list[Any]:
        """n held-out problems (benchmarks: the first n, whatever ``seed``)."""
        if self.data.test == "tiny":
            return task_problems(self.tiny, n, split="test", seed=seed)
        if n > len(self._test_records):
            raise ValueError(f"{n} test problems asked for, but {self.data.test} has {len(self._test_records)} here "
                             f"({self.data.test_path or 'the hub'}); lower evaluate.n_problems.")
        return self._test_records[:n]

    @cached_property
    def _train_records(self) -> list[TextProblem]:
        return text_problems(load_gsm8k("train", path=input_path(self.data.train_path) if self.data.train_path else None))

    @cached_property
    def _test_records(self) -> list[TextProblem]:
        loader = load_gsm8k if self.data.test == "gsm8k" else load_math500
        return text_problems(loader("test", path=input_path(self.data.test_path) if self.data.test_path else None))
