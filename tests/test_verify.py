"""The answer extractor and verifier: properties over number formats, plus real GSM8K/MATH strings."""

from __future__ import annotations

import string
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mass_ref.tasks.verify import extract_answer, is_correct, normalize_number, parse_number

# derandomize: the same examples on every run, so a failure reproduces and CI cannot flake
FAST = settings(max_examples=60, deadline=None, derandomize=True)

# Filler text with no digits and nothing the extractor treats specially; it starts and ends with a
# space so it never glues onto a number ("abc5" is not a number).
filler = st.text(alphabet=string.ascii_letters + " ,;:!?'\n", max_size=30).map(lambda s: f" {s} ")
integers = st.integers(min_value=-10**9, max_value=10**9)
decimals = st.decimals(min_value=-10**6, max_value=10**6, places=3, allow_nan=False, allow_infinity=False)


def renderings(value: int | Decimal) -> list[str]:
    """Ways a model or a dataset writes the same number."""
    plain = format(value, "f") if isinstance(value, Decimal) else str(value)
    commas = format(value, ",f") if isinstance(value, Decimal) else f"{value:,}"
    sign, magnitude = ("-", plain[1:]) if plain.startswith("-") else ("", plain)
    return [plain, commas, f"{plain}.", f"{sign}${magnitude}", f"{plain}0" if "." in plain else f"{plain}.0"]


def canonical(value: int | Decimal) -> str:
    return normalize_number(format(value, "f") if isinstance(value, Decimal) else str(value))


@FAST
@given(st.one_of(integers, decimals), st.data(), filler, filler)
def test_the_last_number_in_any_text_is_recovered(value, data, before, after) -> None:
    written = data.draw(st.sampled_from(renderings(value)))
    wrapper = data.draw(st.sampled_from(["{}", "The answer is {}", "so {} apples in total", "= {}"]))
    text = before + wrapper.format(written) + after
    assert extract_answer(text) == canonical(value)
    assert parse_number(extract_answer(text)) == Fraction(format(value, "f") if isinstance(value, Decimal) else value)


@FAST
@given(integers, integers, filler, filler)
def test_the_number_after_the_last_marker_beats_earlier_numbers(gold, other, before, after) -> None:
    text = f"{before}{other} and {other}{before}#### {other}\n{before}#### {gold}{after}"
    assert extract_answer(text) == str(gold)


@FAST
@given(integers, integers, filler)
def test_boxed_beats_the_marker_and_the_last_number(gold, other, noise) -> None:
    text = f"{noise}\\boxed{{{other}}}{noise}so $\\boxed{{{gold}}}$.{noise}#### {other}{noise}{other}"
    assert extract_answer(text) == str(gold)


@FAST
@given(st.integers(1, 999), st.integers(1, 999))
def test_nested_braces_inside_boxed(p, q) -> None:
    assert extract_answer(f"x = \\boxed{{\\frac{{{p}}}{{{q}}}}} apples") == normalize_number(f"{p}/{q}")
    assert is_correct(f"\\boxed{{\\dfrac{{{p}}}{{{q}}}}}", f"{p}/{q}")


@FAST
@given(st.one_of(integers, decimals), st.data())
def test_is_correct_ignores_formatting_both_ways(value, data) -> None:
    a, b = data.draw(st.sampled_from(renderings(value))), data.draw(st.sampled_from(renderings(value)))
    assert is_correct(f"The answer is {a}", b) and is_correct(f"#### {b}", a)
    assert not is_correct(f"The answer is {a}", str(Fraction(format(value, "f")) + 1))


@FAST
@given(st.one_of(integers, decimals, st.fractions(max_denominator=50)))
def test_normalize_number_is_idempotent_and_exact(value) -> None:
    text = str(value) if not isinstance(value, Decimal) else format(value, "f")
    once = normalize_number(text)
    assert normalize_number(once) == once
    assert parse_number(once) == Fraction(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,000", "1000"), ("5.0", "5"), ("$-3", "-3"), ("-$3", "-3"), ("0.750", "0.75"), ("6/8", "0.75"),
        ("\\frac{14}{3}", "14/3"), ("\\dfrac{-2}{4}", "-0.5"), ("-0", "0"), ("42.", "42"), ("50\\%", "50"),
        ("\\$18", "18"), ("18 \\text{ dollars}", "18"), ("+7", "7"), (".5", "0.5"),
    ],
)
def test_normalize_number_examples(text: str, expected: str) -> None:
    assert normalize_number(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "5\\sqrt{2}", "1/0", "(3, 4)", "1.2.3"])
def test_normalize_number_rejects_non_numbers(text: str) -> None:
    with pytest.raises(ValueError, match="number|denominator"):
        normalize_number(text)


GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
MATH_SOLUTION = (
    "We have that $r = \\sqrt{0^2 + 3^2} = 3.$  Also, the angle is $\\frac{\\pi}{2}.$\n\n"
    "Therefore, the polar coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GSM8K_SOLUTION, "72"),
        (MATH_SOLUTION, "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("Subtracting gives $3x = 14$, so $x = \\boxed{\\frac{14}{3}}$.", "14/3"),
        ("She pays 12 - 3 = 9 dollars, i.e. $9.", "9"),
        ("The total is $1,234,567.89 today", "1234567.89"),
        ("the list 10,20,3000", "3000"),
        ("We know 3 cats and 4 dogs; the answer: 12-5", "5"),
        ("\\boxed{} is empty, but 7 is the last number", "7"),
        ("an unclosed \\boxed{12 so 5", "5"),
        ("First 8, then 9.\n#### no number after the marker", "9"),
        ("#### 8 apples, then 9 pears", "8"),
        ("I could not solve it.", None),
    ],
)
def test_extract_answer_on_real_formats(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_is_correct_on_real_formats() -> None:
    assert is_correct("... so she sold 72 clips.", GSM8K_SOLUTION)
    assert not is_correct("... so she sold 24 clips.", GSM8K_SOLUTION)
    assert is_correct("The answer is $\\boxed{(3,\\frac{\\pi}{2})}$", MATH_SOLUTION)
    assert not is_correct("The answer is $\\boxed{(3,\\pi)}$", MATH_SOLUTION)
    assert is_correct("x = 0.3333333", "\\frac{1}{3}") and not is_correct("x = 0.33", "\\frac{1}{3}")
    assert is_correct("#### 42", 42) and is_correct("about 2.5", 2.5)
    assert not is_correct("#### 999999", "1000000")  # no tolerance between integers
    assert not is_correct("no idea", "42") and not is_correct("42", "")


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="text"):
        extract_answer(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gold"):
        is_correct("42", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prediction_text"):
        is_correct(42, "42")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rel_tol"):
        is_correct("42", "42", rel_tol=-1.0)
