"""Answer extraction and verification for arithmetic and math word problems.

A model's answer is read from free text in this order of priority:

1. the content of the **last** ``\\boxed{...}`` (braces may nest: ``\\boxed{\\frac{1}{2}}``);
2. the first number after the **last** ``####`` (GSM8K's final-answer marker);
3. the **last number** anywhere in the text.

Numbers may carry a sign, thousands separators (``1,234``), decimals, a ``$`` sign, a ``%`` sign,
a trailing period, or be simple fractions (``3/4``, ``\\frac{3}{4}``). Numbers are compared
exactly as fractions, then, unless both are integers, with a relative tolerance (for decimals
such as ``0.3333333``);
anything else (``5\\sqrt{2}``, ``\\left( 3, \\frac{\\pi}{2} \\right)``) is compared as text after
removing spaces, ``$`` and ``\\left``/``\\right``.

Canonical number strings (:func:`normalize_number`): integers as ``"42"``, terminating fractions
as decimals (``"0.75"``, ``"-2.5"``), other fractions as ``"p/q"`` in lowest terms (``"14/3"``).

>>> extract_answer("48 + 24 = <<48+24=72>>72 clips.\\n#### 72")
'72'
>>> extract_answer("So the answer is $\\\\boxed{\\\\frac{14}{3}}$.")
'14/3'
>>> is_correct("The total is $1,000.", "#### 1000")
True

Introduced in notebooks/04_lm_test_time_training.ipynb.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["extract_answer", "is_correct", "normalize_number", "parse_number"]

_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_DECIMAL = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"
# One number in running text: an optional sign (not after a word character or a closing bracket,
# so "12-3" reads as 12 and 3), an optional "$", digits, an optional "/q" denominator; or a LaTeX
# fraction \frac{p}{q}.
_NUMBER_RE = re.compile(
    r"(?P<frac>\\[dt]?frac\{\s*-?\d+\s*\}\{\s*-?\d+\s*\})"
    rf"|(?<![\w.)\]}}])(?P<num>[-+\u2212]?\\?\$?\s?{_DECIMAL}(?:\s?/\s?\d+(?![\d.]))?)"
)
_LATEX_FRAC_RE = re.compile(r"^(-?)\\[dt]?frac\{\s*(-?\d+)\s*\}\{\s*(-?\d+)\s*\}$")
_PLAIN_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:/[-+]?\d+)?$")
_TEXT_WRAPPERS_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def parse_number(text: str) -> Fraction:
    """The exact value of one number written in ``text``.

    Accepts ``"1,234"``, ``"-$5.50"``, ``"+7"``, ``"42."``, ``"50%"`` (read as 50), ``"3/4"``,
    ``"\\frac{3}{4}"``, ``"\\$18"``, ``"18 \\text{ dollars}"``.

    Raises:
        ValueError: ``text`` is not a single number.
    """
    s = _TEXT_WRAPPERS_RE.sub("", text)
    for token in ("\\$", "$", "\\%", "%", "\\!", "\\,", "\\;", "^\\circ", "^{\\circ}", "\\left", "\\right"):
        s = s.replace(token, "")
    s = s.replace("\u2212", "-").replace(" ", "").strip()
    s = s.rstrip(".")
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    frac = _LATEX_FRAC_RE.match(s)
    if frac:
        sign = -1 if frac.group(1) else 1
        numerator, denominator = int(frac.group(2)), int(frac.group(3))
    elif _PLAIN_RE.match(s):
        head, _, tail = s.partition("/")
        numerator_f, denominator = Fraction(head), int(tail) if tail else 1
        if denominator == 0:
            raise ValueError(f"{text!r} has a zero denominator.")
        return numerator_f / denominator
    else:
        raise ValueError(f"{text!r} is not a number (expected e.g. '42', '-1,234.5', '$3', '3/4', '\\frac{{3}}{{4}}').")
    if denominator == 0:
        raise ValueError(f"{text!r} has a zero denominator.")
    return sign * Fraction(numerator, denominator)


def normalize_number(text: str) -> str:
    """The canonical string of the number in ``text``.

    Examples:
        >>> [normalize_number(s) for s in ("1,000", "5.0", "$-3", "0.750", "6/8", "\\\\frac{14}{3}", "-0")]
        ['1000', '5', '-3', '0.75', '0.75', '14/3', '0']

    Raises:
        ValueError: ``text`` is not a single number (see :func:`parse_number`).
    """
    return _format_fraction(parse_number(text))


def _format_fraction(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    q, twos, fives = value.denominator, 0, 0
    while q % 2 == 0:
        q, twos = q // 2, twos + 1
    while q % 5 == 0:
        q, fives = q // 5, fives + 1
    if q != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    digits = str(scaled).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` whose braces balance, or None."""
    found = None
    for match in _BOXED_RE.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found = text[start:i]
                break
    return found


def _clean(answer: str) -> str:
    """A number's canonical form, or the trimmed text when it is not a number."""
    answer = answer.strip().strip("$").strip()
    try:
        return normalize_number(answer)
    except ValueError:
        return answer


def extract_answer(text: str) -> str | None:
    """The final answer in ``text`` (see the module docstring for the rules), or None.

    Numeric answers come back canonical (:func:`normalize_number`); a non-numeric ``\\boxed``
    content comes back trimmed.

    >>> extract_answer("I think 3, no: 4 apples and 5 pears, so $9.")
    '9'
    >>> extract_answer("#### 12\\nThe answer is \\\\boxed{\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)}")
    '\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)'
    >>> extract_answer("no digits here") is None
    True
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a string; got {type(text).__name__}.")
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return _clean(boxed)
    marker = text.rfind("####")
    if marker >= 0:
        after = _NUMBER_RE.search(text, marker + 4)
        if after is not None:
            return _clean(after.group())
    matches = list(_NUMBER_RE.finditer(text))
    return _clean(matches[-1].group()) if matches else None


def _gold_answer(gold: str) -> str | None:
    """``gold`` is a bare answer ("42", "\\frac{14}{3}") or a solution with ``####``/``\\boxed``."""
    if "####" in gold or _BOXED_RE.search(gold):
        return extract_answer(gold)
    return _clean(gold) if gold.strip() else None


def _canonical_text(answer: str) -> str:
    s = _TEXT_WRAPPERS_RE.sub(r"\1", answer)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "$", " "):
        s = s.replace(token, "")
    return s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")


def is_correct(prediction_text: str, gold: str | int | float, *, rel_tol: float = 1e-6) -> bool:
    """Whether the answer extracted from ``prediction_text`` matches ``gold``.

    Args:
        prediction_text: a model's output (any length); its answer is :func:`extract_answer`.
        gold: the reference: a bare answer (``"42"``, ``42``, ``"\\frac{14}{3}"``) or a full
            solution containing ``#### N`` or ``\\boxed{...}``.
        rel_tol: relative tolerance when either number is not an integer (``0.3333333`` vs
            ``1/3``); two integers must be equal.

    >>> is_correct("so 5.0 in total", "5"), is_correct("#### 6", "Natalia ... #### 5")
    (True, False)
    """
    if not isinstance(prediction_text, str):
        raise ValueError(f"prediction_text must be a string; got {type(prediction_text).__name__}.")
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold = repr(gold)
    if not isinstance(gold, str):
        raise ValueError(f"gold must be a string or a number; got {type(gold).__name__}.")
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol must be >= 0; got {rel_tol!r}.")
    predicted, reference = extract_answer(prediction_text), _gold_answer(gold)
    if predicted is None or reference is None:
        return False
    try:
        p, g = parse_number(predicted), parse_number(reference)
    except ValueError:
        return _canonical_text(predicted) == _canonical_text(reference)
    if p == g:
        return True
    if p.denominator == 1 and g.denominator == 1:  # integers match exactly or not at all
        return False
    try:
        return math.isclose(float(p), float(g), rel_tol=rel_tol, abs_tol=0.0)
    except OverflowError:
        return False
