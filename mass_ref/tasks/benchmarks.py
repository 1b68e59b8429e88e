"""Loaders for the real benchmarks GSM8K and MATH-500, from the Hugging Face Hub or a local copy.

Both return a list of plain dicts (``datasets.Dataset.from_list`` turns it into a dataset) with
one common schema, so the same evaluation code runs on either benchmark and on the templated
problems of :mod:`mass_ref.tasks.arithmetic`:

* ``question``: the problem statement;
* ``answer``: the full reference solution (GSM8K: steps with ``<<a*b=c>>`` calculator
  annotations ending ``"#### N"``; MATH-500: LaTeX ending in ``\\boxed{...}``);
* ``final_answer``: the short answer (GSM8K: the number after ``####``, canonical;
  MATH-500: the dataset's ``answer`` column, e.g. ``"\\frac{14}{3}"``).

MATH-500 records also keep ``subject`` (e.g. ``"Algebra"``), ``level`` (1–5) and ``unique_id``.

Sources (hub column names):

* GSM8K: ``datasets.load_dataset("openai/gsm8k", "main", split=...)``, splits ``train``/``test``,
  columns ``question``, ``answer``.
* MATH-500: ``datasets.load_dataset("HuggingFaceH4/MATH-500", split="test")``, columns
  ``problem``, ``solution``, ``answer``, ``subject``, ``level``, ``unique_id``.

Offline, pass ``path=`` to a local copy in the hub's format: ``.jsonl`` (one record a line, as
``Dataset.to_json`` writes), ``.json`` (a list of records) or ``.parquet`` (the hub's files).

Examples:
    >>> load_gsm8k(path="mass_ref/tasks/samples/gsm8k_test_sample.jsonl", limit=1)[0]["final_answer"]  # from the repo root
    '54'

Introduced in notebooks/04_lm_test_time_training.ipynb.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mass_ref.tasks.verify import normalize_number

__all__ = [
    "GSM8K_HUB_NAME",
    "MATH500_HUB_NAME",
    "BenchmarkUnavailableError",
    "load_gsm8k",
    "load_math500",
    "read_records",
]

GSM8K_HUB_NAME = "openai/gsm8k"
GSM8K_CONFIG = "main"
GSM8K_SPLITS = ("train", "test")
GSM8K_COLUMNS = ("question", "answer")
MATH500_HUB_NAME = "HuggingFaceH4/MATH-500"
MATH500_SPLITS = ("test",)
MATH500_COLUMNS = ("problem", "solution", "answer", "subject", "level", "unique_id")
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


class BenchmarkUnavailableError(ConnectionError):
    """The hub could not be reached (offline machine); the message names the ``path=`` option."""


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local ``.jsonl``, ``.json`` (list of objects) or ``.parquet`` file, as dicts."""
    path = Path(path)
    if path.suffix not in LOCAL_SUFFIXES:
        raise ValueError(f"path must end in one of {LOCAL_SUFFIXES}; got {str(path)!r}.")
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} does not exist; pass a local copy of the benchmark.")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"line {number} of {str(path)!r} is not valid JSON ({error.msg}); "
                                     "a .jsonl file holds one JSON object per line.") from error
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{str(path)!r} is not valid JSON ({error}).") from error
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{str(path)!r} must hold a JSON list of records (objects), one per problem.")
    if not rows:
        raise ValueError(f"{str(path)!r} holds no records; it needs at least one problem.")
    return rows


def _check_split_and_limit(split: str, splits: Sequence[str], limit: int | None, hub_name: str) -> None:
    if split not in splits:
        raise ValueError(f"split must be one of {tuple(splits)} for {hub_name}; got {split!r}.")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None (all records); got {limit!r}.")


def _rows(hub_name: str, config: str | None, split: str, path: str | Path | None,
          columns: Sequence[str], limit: int | None) -> list[dict[str, Any]]:
    """Raw rows from ``path`` or from the hub, first ``limit`` only, with ``columns`` checked."""
    if path is not None:
        rows = read_records(path)
        where = repr(str(path))
    else:
        import datasets

        args = (hub_name, config) if config else (hub_name,)
        try:
            dataset = datasets.load_dataset(*args, split=split)
        except OSError as err:  # ConnectionError (offline / unreachable), DatasetNotFoundError, ...
            raise BenchmarkUnavailableError(
                f"Could not load {hub_name!r} (split {split!r}) from the Hugging Face Hub: {err}. "
                "This machine may be offline. Pass path=... to a local copy in the hub's format "
                f"({', '.join(LOCAL_SUFFIXES)}), e.g. one written with Dataset.to_json on a machine "
                "with network access."
            ) from err
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        rows = dataset.to_list()
        where = f"{hub_name} ({split})"
    rows = rows[:limit] if limit is not None else rows
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(
                f"record {i} of {where} lacks columns {missing}; expected the hub's columns {list(columns)}, "
                f"found {sorted(row)}."
            )
    return rows


def _gsm8k_final_answer(solution: str, where: str = "") -> str:
    """The text after the last ``####`` of a GSM8K solution, canonical when it is a number."""
    if "####" not in solution:
        raise ValueError(f"a GSM8K answer must end with '#### N'; got {solution[-80:]!r}{where}.")
    final = solution.rsplit("####", 1)[1].strip()
    try:
        return normalize_number(final)
    except ValueError:
        return final


def load_gsm8k(
    split: str = "test", *, path: str | Path | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """GSM8K (Cobbe et al. 2021) as records ``{question, answer, final_answer}``.

    Args:
        split: ``"train"`` (7,473 problems) or ``"test"`` (1,319).
        path: a local ``.jsonl``/``.json``/``.parquet`` copy with the hub's columns
            (``question``, ``answer``); None loads ``openai/gsm8k`` (config ``main``) from the hub.
        limit: keep only the first ``limit`` records (None: all).

    Raises:
        ValueError: an unknown ``split``, a bad ``limit``, or records without the hub's columns.
        BenchmarkUnavailableError: the hub is unreachable and no ``path`` was given.
    """
    _check_split_and_limit(split, GSM8K_SPLITS, limit, GSM8K_HUB_NAME)
    rows = _rows(GSM8K_HUB_NAME, GSM8K_CONFIG, split, path, GSM8K_COLUMNS, limit)
    source = repr(str(path)) if path is not None else f"{GSM8K_HUB_NAME} ({split})"
    return [
        {"question": row["question"], "answer": row["answer"],
         "final_answer": _gsm8k_final_answer(row["answer"], f" in record {i} of {source}")}
        for i, row in enumerate(rows)
    ]


def load_math500(
    split: str = "test", *, path: str | Path | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """MATH-500 (Lightman et al. 2023's subset of MATH) as records.

    Keys: ``question`` (the ``problem``), ``answer`` (the ``solution``), ``final_answer`` (the
    ``answer`` column, LaTeX), ``subject``, ``level`` (int 1–5), ``unique_id``.

    Args:
        split: ``"test"``, the only split on the hub.
        path: a local ``.jsonl``/``.json``/``.parquet`` copy with the hub's columns; None loads
            ``HuggingFaceH4/MATH-500`` from the hub.
        limit: keep only the first ``limit`` records (None: all 500).

    Raises:
        ValueError: an unknown ``split``, a bad ``limit``, or records without the hub's columns.
        BenchmarkUnavailableError: the hub is unreachable and no ``path`` was given.
    """
    _check_split_and_limit(split, MATH500_SPLITS, limit, MATH500_HUB_NAME)
    rows = _rows(MATH500_HUB_NAME, None, split, path, MATH500_COLUMNS, limit)
    return [
        {
            "question": row["problem"],
            "answer": row["solution"],
            "final_answer": row["answer"],
            "subject": row["subject"],
            "level": int(row["level"]),
            "unique_id": row["unique_id"],
        }
        for row in rows
    ]
