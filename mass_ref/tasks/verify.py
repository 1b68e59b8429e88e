"""Answer extraction and verification for GSM8K- and MATH-500-style answers.

Every accuracy in chapters 4–7 is :func:`is_correct`: it reads one final answer from the model's
text and one from the reference, then compares them. docs/grading.md lists the answer formats it
is tested on, with the number of cases of each that it grades right.

**What is read** (:func:`extract_answer`): the first of these rules that applies.

1. The content of the **last** ``\\boxed{...}`` (or ``\\fbox{...}``; braces may nest).
2. The first number after the **last** ``####`` (GSM8K's final-answer marker); ``#### 1 000``
   reads 1000.
3. The **whole text**, when it is a bare answer rather than prose: one line (``$...$``,
   ``\\(...\\)`` or ``\\[...\\]`` around it and a final period are dropped) that is a formula — it
   has a LaTeX command, ``^``, ``_``, a brace or a bracket, no word of two or more letters outside
   ``\\text{...}``, and at most one ``=``, after a single variable (``x = -12``) — such as
   ``5\\sqrt{2}`` or ``(3, \\frac{\\pi}{2})``; or a number grouped by spaces (``1 000``); or one word
   (``Monday``).
4. The **last number** anywhere in the text. A worked line such as ``3 + 4 = 7`` reads 7, and
   LaTeX inside prose is read by this rule too (``the answer is $5\\sqrt{2}$`` reads 2): ask the
   model for ``\\boxed{}``.

**Numbers** (:func:`parse_number`) may carry a sign (also ``−``), ``$`` or ``\\$``, thousands
separators (``1,000``, ``1{,}000``, ``1\\,000``, a thin or no-break space), decimals, an exponent
(``1e3``, ``2.5E-2``), a trailing period; fractions are ``3/4``, ``\\frac{3}{4}``, ``\\dfrac``,
``\\tfrac``, ``\\frac34``, and ``1\\frac{7}{12}`` is the mixed number 19/12. ``x =`` before a
boxed number is dropped.

* **Percentages**: the sign is dropped, so ``50%`` matches 50 (as the GSM8K and MATH graders do),
  and ``0.5`` does not match ``50\\%``.
* **Units**: ``\\text{...}`` wrappers, degrees (``^\\circ``) and words after a number are dropped:
  ``5 dollars``, ``18\\text{ cm}``, ``30^\\circ`` read 5, 18 and 30.

**Comparison** (:func:`is_correct`):

* Two numbers (the fast path, no sympy): equal as exact fractions; two integers must be equal;
  otherwise equal within the relative tolerance ``rel_tol`` (``0.3333333`` matches 1/3).
* Anything else: equal as text after removing spaces, ``$``, ``\\left``/``\\right`` and
  ``\\text{}`` wrappers (``\\text{Monday}`` matches ``Monday``; text answers are case-sensitive);
  otherwise compared by Hugging Face's [math-verify](https://github.com/huggingface/Math-Verify),
  which parses LaTeX into sympy: ``\\sqrt{50}`` matches ``5\\sqrt{2}``; intervals, sets, tuples,
  matrices and equations (``y = 2x + 3`` vs ``2x + 3``) compare by value; a decimal against an
  expression must agree to 6 decimal places (``1.414214`` matches ``\\sqrt{2}``, ``1.4142`` does not).
* Deterministic and usable from any thread (notebook kernels, DataLoader workers): math-verify's
  timeouts are off, since they rely on ``signal.alarm`` (main thread only) and on the machine's
  speed. Instead, answers over 400 characters, exponents above 10 000 and factorials above 10 000
  are not compared symbolically (so they match only as text), which keeps every check short.

Canonical number strings (:func:`normalize_number`): integers as ``"42"``, terminating fractions
as decimals (``"0.75"``, ``"-2.5"``), other fractions as ``"p/q"`` in lowest terms (``"14/3"``).

>>> extract_answer("48 + 24 = <<48+24=72>>72 clips.\\n#### 72")
'72'
>>> extract_answer("So the answer is $\\\\boxed{\\\\frac{14}{3}}$.")
'14/3'
>>> is_correct("The total is $1,000.", "#### 1000")
True
>>> is_correct("5\\\\sqrt{2}", "\\\\sqrt{50}"), is_correct("2", "5\\\\sqrt{2}")
(True, False)

Introduced in notebooks/04_lm_test_time_training.ipynb.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from fractions import Fraction
from types import ModuleType
from typing import Any

__all__ = ["extract_answer", "is_correct", "normalize_number", "parse_number"]

# Thousands separators that never separate two numbers in running text: a comma, LaTeX's "{,}"
# and "\,", and the thin and no-break spaces (a plain space is read as one only in a bare answer).
_SEP = r"(?:,|\{,\}|\\,|[\u2009\u202f\u00a0])"
_INT = rf"(?:\d{{1,3}}(?:{_SEP}\d{{3}})+(?!\d)|\d+)"
# An exponent has at most 3 digits (1e999999999 would take minutes to expand) and ends the word ("3e6."
# ends a sentence; "3E1AZ" is no number).
_EXPONENT = r"(?:[eE][-+]?\d{1,3}(?!\d|\.\d|[A-Za-z_]))?"
_DECIMAL = rf"(?:{_INT}(?:\.\d+)?|\.\d+){_EXPONENT}"
# One number in running text: an optional sign (not after a word character or a closing bracket,
# so "12-3" reads as 12 and 3), an optional "$", digits, an optional "/q" denominator; or a LaTeX
# fraction \frac{p}{q}.
_NUMBER_RE = re.compile(
    r"(?P<frac>\\[dt]?frac\{\s*-?\d+\s*\}\{\s*-?\d+\s*\})"
    rf"|(?<![\w.)\]}}])(?P<num>[-+\u2212]?\\?\$?\s?{_DECIMAL}(?:\s?/\s?\d+(?![\d.]))?)"
)
# A number grouped by plain spaces ("1 000"), read as one number only where nothing else can
# follow: a bare answer, or right after "####".
_SPACED_NUMBER = r"[-+\u2212]?\\?\$?\s?\d{1,3}(?:[ \u2009\u202f\u00a0]\d{3})+(?:\.\d+)?(?![\d.,])"
_SPACED_NUMBER_RE = re.compile(_SPACED_NUMBER)
_MARKER_SPACED_RE = re.compile(rf"\s*({_SPACED_NUMBER})")
_FRAC_ARG = r"(?:\{\s*(-?\d+)\s*\}|(\d))"  # \frac{12}{5} or LaTeX's one-digit shorthand \frac34
_LATEX_FRAC_RE = re.compile(rf"^(-?)(\d*)\\[dt]?frac{_FRAC_ARG}{_FRAC_ARG}$")
_PLAIN_INT_RE = re.compile(r"[-+]?\d+")
_PLAIN_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d{1,3})?(?:/[-+]?\d+)?$")
_TEXT_WRAPPERS_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\{([^{}]*)\}")
_UNIT_TEXT_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\{[^{}]*\}(?:\^\{?[23]\}?)?")  # "\text{ cm}^2"
# Unit words after a number ("5 dollars", "12 cm^2."); a word needs two letters, so "2 x" stays.
_TRAILING_WORDS_RE = re.compile(r"(?<=[\d}%.])\s+(?:[A-Za-z]{2,}(?:\^\{?[23]\}?)?[\s.]*)+$")
_ASSIGNMENT_RE = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*")  # "x = ", "a_1 = ", "x_{n} = "
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FORMULA_HINT_RE = re.compile(r"\\[A-Za-z]|[\^_{}()\[\]]")
_LATEX_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_WORD_RE = re.compile(r"[A-Za-z]{2,}")
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))

MAX_BARE_ANSWER_CHARS = 200
"""Rule 3 reads a whole text as the answer only up to this length."""
MAX_SYMBOLIC_CHARS = 400
"""Longer answers are compared as text only (math-verify could take long on them)."""
MAX_SYMBOLIC_MAGNITUDE = 10_000
"""An exponent or factorial argument above this keeps an answer from the symbolic comparison."""


def parse_number(text: str) -> Fraction:
    """The exact value of one number written in ``text``.

    Accepts ``"1,234"``, ``"1{,}234"``, ``"-$5.50"``, ``"+7"``, ``"42."``, ``"50%"`` (read as 50),
    ``"3/4"``, ``"\\frac{3}{4}"``, ``"\\frac34"``, ``"1\\frac{7}{12}"`` (19/12), ``"1e3"``,
    ``"\\$18"``, ``"18 \\text{ dollars}"``, ``"18 dollars"``, ``"30^\\circ"``.

    Raises:
        ValueError: ``text`` is not a single number.
    """
    if _PLAIN_INT_RE.fullmatch(text):  # the fast path: most answers (all the tiny family's) are plain integers
        return Fraction(int(text))
    s = _UNIT_TEXT_RE.sub("", text).replace("{,}", ",")
    for token in ("\\$", "$", "\\%", "%", "\\!", "\\,", "\\;", "^\\circ", "^{\\circ}", "\u00b0", "\\left", "\\right"):
        s = s.replace(token, "")
    s = _TRAILING_WORDS_RE.sub("", s.strip())
    s = re.sub(r"\s+", "", s.replace("\u2212", "-")).rstrip(".")
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    frac = _LATEX_FRAC_RE.match(s)
    if frac:
        sign, whole, p_braced, p_digit, q_braced, q_digit = frac.groups()
        numerator, denominator = int(p_braced or p_digit), int(q_braced or q_digit)
        if denominator == 0:
            raise ValueError(f"{text!r} has a zero denominator.")
        if whole and (numerator < 0 or denominator < 0):  # "2\frac{-1}{2}" is no mixed number
            raise ValueError(f"{text!r} is not a number.")
        # A mixed number 1\frac{7}{12} is 1 + 7/12, and -1\frac{7}{12} is -(1 + 7/12), as in MATH.
        return (-1 if sign else 1) * (int(whole or 0) + Fraction(numerator, denominator))
    if _PLAIN_RE.match(s):
        head, _, tail = s.partition("/")
        numerator_f, denominator = Fraction(head), int(tail) if tail else 1
        if denominator == 0:
            raise ValueError(f"{text!r} has a zero denominator.")
        return numerator_f / denominator
    raise ValueError(f"{text!r} is not a number (expected e.g. '42', '-1,234.5', '$3', '3/4', '\\frac{{3}}{{4}}').")


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
    """A number's canonical form (also after ``x =``), or the trimmed text when it is not a number."""
    answer = answer.strip().strip("$").strip()
    for candidate in (answer, _ASSIGNMENT_RE.sub("", answer, count=1)):
        try:
            return normalize_number(candidate)
        except ValueError:
            pass
    return answer


def _bare_answer(text: str) -> str | None:
    """``text`` itself when it is a bare answer, not prose (rule 3 of the module docstring), else None."""
    s = text.strip().rstrip(".").strip()
    for opening, closing in _MATH_DELIMITERS:
        if s.startswith(opening) and s.endswith(closing) and len(s) > len(opening) + len(closing):
            s = s[len(opening):-len(closing)].strip().rstrip(".").strip()
            break
    if not s or len(s) > MAX_BARE_ANSWER_CHARS or "\n" in s or _BOXED_RE.search(s):
        return None  # too long or several lines for one answer; an empty \boxed{} leaves the last number
    if _SPACED_NUMBER_RE.fullmatch(s) or re.fullmatch(r"[A-Za-z]{2,}", s):
        return s
    if not _FORMULA_HINT_RE.search(s):
        return None  # plain text such as "a 5 b" or "= 5": its last number is the answer
    outside_text = _LATEX_COMMAND_RE.sub(" ", _TEXT_WRAPPERS_RE.sub(" ", s))
    if _WORD_RE.search(outside_text):
        return None  # prose with some LaTeX in it
    if "=" in s and (s.count("=") > 1 or not _ASSIGNMENT_RE.match(s)):
        return None  # a worked step such as "(3 + 4) \cdot 2 = 14": its result is the last number
    return s


def extract_answer(text: str) -> str | None:
    """The final answer in ``text`` (see the module docstring for the rules), or None.

    Numeric answers come back canonical (:func:`normalize_number`); any other answer comes back
    trimmed.

    >>> extract_answer("I think 3, no: 4 apples and 5 pears, so $9.")
    '9'
    >>> extract_answer("#### 12\\nThe answer is \\\\boxed{\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)}")
    '\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)'
    >>> extract_answer("$5\\\\sqrt{2}$"), extract_answer("\\\\boxed{x = -12}"), extract_answer("1 000")
    ('5\\\\sqrt{2}', '-12', '1000')
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
        spaced = _MARKER_SPACED_RE.match(text, marker + 4)
        after = spaced or _NUMBER_RE.search(text, marker + 4)
        if after is not None:
            return _clean(after.group(1) if spaced else after.group())
    bare = _bare_answer(text)
    if bare is not None:
        return _clean(bare)
    matches = list(_NUMBER_RE.finditer(text))
    return _clean(matches[-1].group()) if matches else None


def _gold_answer(gold: str) -> str | None:
    """``gold`` is a bare answer ("42", "\\frac{14}{3}") or a solution with ``####``/``\\boxed``."""
    if "####" in gold or _BOXED_RE.search(gold):
        return extract_answer(gold)
    return _clean(gold) if gold.strip() else None


def _canonical_text(answer: str) -> str:
    s = _TEXT_WRAPPERS_RE.sub(r"\1", answer)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\displaystyle", "$", " "):
        s = s.replace(token, "")
    return s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")


class _DropNoTimeoutNotice(logging.Filter):
    """Hides math-verify's one-off warning that its timeouts are off: they are off on purpose here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


@functools.cache
def _math_verify() -> ModuleType:
    """math-verify, imported on first use: it loads sympy (about a second), which the numeric fast path never needs."""
    import math_verify

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropNoTimeoutNotice())
    return math_verify


@functools.lru_cache(maxsize=4096)
def _parse_symbolic(answer: str) -> tuple[Any, ...]:
    """math-verify's reading of one answer (a sympy object and the string), cached: a gold answer is parsed once."""
    mv = _math_verify()
    config = [mv.LatexExtractionConfig(boxed_match_priority=0), mv.ExprExtractionConfig()]
    # parsing_timeout=None: no signal.alarm, so this runs in any thread and gives the same result on any machine
    return tuple(mv.parse(f"\\boxed{{{answer}}}", extraction_config=config, parsing_timeout=None))


def _too_costly(parsed: tuple[Any, ...]) -> bool:
    """Whether comparing ``parsed`` could take very long: a huge exponent (``10^{10^{10}}``) or factorial."""
    import sympy

    for item in parsed:
        if isinstance(item, str):
            continue
        nodes = item if isinstance(item, sympy.MatrixBase) else [item]
        for node in (n for expr in nodes for n in sympy.preorder_traversal(expr)):
            if isinstance(node, sympy.Pow):
                argument = node.exp
            elif isinstance(node, sympy.factorial):
                argument = node.args[0]
            else:
                continue
            if argument.free_symbols:
                continue
            try:  # evalf reads a tower such as 9^{9^9} in floating point without expanding it
                if abs(complex(argument.evalf(8))) > MAX_SYMBOLIC_MAGNITUDE:
                    return True
            except (TypeError, ValueError, OverflowError):
                return True
    return False


def _symbolically_equal(reference: str, predicted: str) -> bool:
    """math-verify's verdict on two non-numeric (or mixed) answers; False for answers it should not try."""
    if max(len(reference), len(predicted)) > MAX_SYMBOLIC_CHARS:
        return False
    gold, target = _parse_symbolic(reference), _parse_symbolic(predicted)
    if not gold or not target or _too_costly(gold) or _too_costly(target):
        return False
    return bool(_math_verify().verify(list(gold), list(target), timeout_seconds=None))


def is_correct(prediction_text: str, gold: str | int | float, *, rel_tol: float = 1e-6) -> bool:
    """Whether the answer extracted from ``prediction_text`` matches ``gold``.

    Args:
        prediction_text: a model's output (any length); its answer is :func:`extract_answer`.
        gold: the reference: a bare answer (``"42"``, ``42``, ``"\\frac{14}{3}"``) or a full
            solution containing ``#### N`` or ``\\boxed{...}``.
        rel_tol: relative tolerance when both answers are numbers and one is not an integer
            (``0.3333333`` vs ``1/3``); two integers must be equal. Other answers are compared
            by math-verify (see the module docstring).

    >>> is_correct("so 5.0 in total", "5"), is_correct("#### 6", "Natalia ... #### 5")
    (True, False)
    >>> is_correct("$\\\\boxed{1\\\\frac{7}{12}}$", "\\\\frac{19}{12}"), is_correct("#### 12", "-12")
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
        return _canonical_text(predicted) == _canonical_text(reference) or _symbolically_equal(reference, predicted)
    if p == g:
        return True
    if p.denominator == 1 and g.denominator == 1:  # integers match exactly or not at all
        return False
    try:
        return math.isclose(float(p), float(g), rel_tol=rel_tol, abs_tol=0.0)
    except OverflowError:
        return False
