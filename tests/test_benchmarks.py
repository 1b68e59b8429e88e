"""GSM8K and MATH-500 loaders: offline on the fixtures, and the hub path with a stand-in loader."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from mass_ref.tasks.benchmarks import BenchmarkUnavailableError, load_gsm8k, load_math500, read_records
from mass_ref.tasks.verify import extract_answer, is_correct

FIXTURES = Path(__file__).resolve().parent.parent / "mass_ref" / "tasks" / "samples"
GSM8K = FIXTURES / "gsm8k_test_sample.jsonl"
MATH500 = FIXTURES / "math500_test_sample.jsonl"


def test_fixtures_are_in_the_hub_format() -> None:
    for row in read_records(GSM8K):
        assert set(row) == {"question", "answer"}
        assert "<<" in row["answer"] and row["answer"].split("\n")[-1].startswith("#### ")
    for row in read_records(MATH500):
        assert set(row) == {"problem", "solution", "answer", "subject", "level", "unique_id"}
        assert "\\boxed{" in row["solution"] and isinstance(row["level"], int)


def test_load_gsm8k_from_a_local_file() -> None:
    records = load_gsm8k(path=GSM8K)
    assert len(records) == 5 and records[0].keys() == {"question", "answer", "final_answer"}
    assert [r["final_answer"] for r in records] == ["54", "630", "400", "200", "108"]
    assert load_gsm8k(path=GSM8K, limit=2) == records[:2]


def test_load_math500_from_a_local_file() -> None:
    records = load_math500(path=str(MATH500))
    assert len(records) == 5
    assert records[0].keys() == {"question", "answer", "final_answer", "subject", "level", "unique_id"}
    assert records[1]["final_answer"] == "\\frac{14}{3}" and records[1]["subject"] == "Algebra"
    assert any("\\frac" in r["final_answer"] for r in records)


@pytest.mark.parametrize("loader,path", [(load_gsm8k, GSM8K), (load_math500, MATH500)])
def test_the_verifier_accepts_each_fixture_gold(loader, path: Path) -> None:
    for record in loader(path=path):
        assert extract_answer(record["answer"]) is not None
        assert is_correct(record["answer"], record["final_answer"])
        assert is_correct(f"So the answer is \\boxed{{{record['final_answer']}}}.", record["answer"])
        assert not is_correct("So the answer is \\boxed{999}.", record["answer"])


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_json_and_parquet_copies_load_the_same(tmp_path: Path, suffix: str) -> None:
    rows = read_records(MATH500)
    path = tmp_path / f"math500{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    assert load_math500(path=path) == load_math500(path=MATH500)


def test_hub_path_uses_the_hub_names(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        source = GSM8K if args[0] == "openai/gsm8k" else MATH500
        return datasets.Dataset.from_list(read_records(source))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_gsm8k("train", limit=3) == load_gsm8k(path=GSM8K, limit=3)
    assert load_math500() == load_math500(path=MATH500)
    assert calls == [(("openai/gsm8k", "main"), {"split": "train"}), (("HuggingFaceH4/MATH-500",), {"split": "test"})]


@pytest.mark.parametrize("loader", [load_gsm8k, load_math500])
def test_offline_hub_error_names_the_path_option(monkeypatch: pytest.MonkeyPatch, loader) -> None:
    def unreachable(*args, **kwargs):
        raise ConnectionError(f"Couldn't reach '{args[0]}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(BenchmarkUnavailableError, match="offline.*path=") as info:
        loader()
    assert isinstance(info.value, ConnectionError) and isinstance(info.value.__cause__, ConnectionError)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: load_gsm8k("validation", path=GSM8K), "split"),
        (lambda: load_math500("train", path=MATH500), "split"),
        (lambda: load_gsm8k(path=GSM8K, limit=0), "limit"),
        (lambda: load_math500(path=MATH500, limit="5"), "limit"),
        (lambda: load_gsm8k(path=FIXTURES / "data.csv"), "path"),
        (lambda: load_gsm8k(path=MATH500), "columns"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()


def test_missing_file_is_reported() -> None:
    with pytest.raises(FileNotFoundError, match="path"):
        load_math500(path=FIXTURES / "absent.jsonl")
