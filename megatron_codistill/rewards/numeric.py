"""Exact comparison of plain numbers, ahead of math-verify.

math-verify compares floats after rounding to 6 decimals, so `1.325 \\times 10^{-27}` equals
`1.325 \\times 10^{-28}` and `.0000672` equals `.0000673` there. Physics answers (Minerva) are full
of such magnitudes, so when both answers are plain numbers we compare them ourselves, exactly in
decimal arithmetic, with a relative tolerance. Numbers written in a base (`52_8`, `4210_{5}`)
are numerals: math-verify drops the subscript, so we compare digits and base as text.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation, localcontext

REL_TOL = Decimal("1e-6")
"""Relative tolerance of the comparison: float noise passes, any changed significant digit fails."""

_MANT = r"\d+(?:\.\d*)?|\.\d+"
_POW10 = r"10\s*\^\s*\{?\s*(?P<exp>[+-]?\d{1,4})\s*\}?"
_NUMBER = re.compile(
    rf"^(?P<sign>[+-]?)\s*(?:(?P<plain>{_MANT})|(?:(?P<mant>{_MANT})\s*(?:\\times|\\cdot)\s*)?{_POW10})$"
)
_BASE_NUMERAL = re.compile(r"^(?P<digits>[0-9A-Z]*[0-9][0-9A-Z]*)_\{?(?P<base>\d{1,2})\}?$")


def parse_number(text: str) -> Decimal | None:
    """`-4.5 \\times 10^{33}`, `10^{-3}`, `0.006`, `42` -> Decimal; anything else -> None."""
    m = _NUMBER.match(text.strip())
    if m is None:
        return None
    try:
        with localcontext() as ctx:
            ctx.prec = 60
            if m.group("plain") is not None:
                value = Decimal(m.group("plain"))
            else:
                value = Decimal(m.group("mant") or "1").scaleb(int(m.group("exp")))
            return -value if m.group("sign") == "-" else value
    except (InvalidOperation, ValueError):
        return None


def numbers_match(gold: Decimal, pred: Decimal) -> bool:
    """Exact when both are integers (GSM8K: 1000000 != 1000001); otherwise
    |gold - pred| <= REL_TOL * max(|gold|, |pred|)."""
    with localcontext() as ctx:
        ctx.prec = 60
        if gold == gold.to_integral_value() and pred == pred.to_integral_value():
            return gold == pred
        return abs(gold - pred) <= REL_TOL * max(abs(gold), abs(pred))


def _base_numeral(text: str) -> tuple[str, int] | None:
    m = _BASE_NUMERAL.match(text.strip())
    if m is None:
        return None
    base = int(m.group("base"))
    if not 2 <= base <= 36:
        return None
    try:
        int(m.group("digits"), base)  # every digit must exist in that base (`x_1` is not a numeral)
    except ValueError:
        return None
    return m.group("digits"), base


def compare_plain(gold: str, pred: str) -> bool | None:
    """True/False when both (normalised) answers are plain numbers, or when the gold is a base-n
    numeral (the prediction then needs the same digits, with the same base or none); None when
    math-verify should decide."""
    numeral = _base_numeral(gold)
    if numeral is not None:
        pred_numeral = _base_numeral(pred)
        if pred_numeral is not None:
            return pred_numeral == numeral
        return pred.strip() == numeral[0]
    g, p = parse_number(gold), parse_number(pred)
    if g is None or p is None:
        return None
    return numbers_match(g, p)
