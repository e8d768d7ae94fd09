from decimal import Decimal

import pytest

from megatron_codistill.rewards.normalize import e_notation_to_latex, normalize_answer
from megatron_codistill.rewards.numeric import compare_plain, parse_number


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("4.5e33", "4.5 \\times 10^{33}"),
        ("1e-5", "1 \\times 10^{-5}"),
        ("3.83e+35", "3.83 \\times 10^{35}"),
        ("1.2E03", "1.2 \\times 10^{3}"),
        ("70,000", "70000"),
        ("$1,234,567.5$", "1234567.5"),
        ("1{,}000", "1000"),
        ("1,\\!000", "1000"),
        ("\\$18.", "18"),
        ("20\\%", "20"),
        ("20 \\text{\\%}", "20"),
        ("-1./3", "-1/3"),
        ("np.arcsin(10/13)", "\\arcsin(10/13)"),
        ("\\(x=5\\)", "x=5"),
        ("1,2", "1,2"),  # a list, not a thousands separator
        ("e^{2t}", "e^{2t}"),  # Euler's e stays
        ("x_2e3", "x_2e3"),  # inside a name: not a number
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_e_notation_only_standalone_numbers():
    assert e_notation_to_latex("2e3 + 3e") == "2 \\times 10^{3} + 3e"


@pytest.mark.parametrize(
    "text, value",
    [
        ("42", Decimal(42)),
        ("-0.006", Decimal("-0.006")),
        (".5", Decimal("0.5")),
        ("4.5 \\times 10^{33}", Decimal("4.5e33")),
        ("10^{-3}", Decimal("0.001")),
        ("2.5\\cdot 10^4", Decimal(25000)),
        ("x", None),
        ("\\frac{1}{2}", None),
        ("10^{100000}", None),  # more than 4 exponent digits: left to math-verify (and its deadline)
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "gold, pred, expected",
    [
        ("1.325 \\times 10^{-27}", "1.325 \\times 10^{-28}", False),  # math-verify's rounding says True
        (".0000672", ".0000673", False),  # math-verify's rounding says True
        ("1000000", "1000001", False),  # integers compare exactly
        ("0.1", "0.10", True),
        ("4.5 \\times 10^{33}", "4500000000000000000000000000000000", True),
        ("1.6", "1.6000000001", True),  # within the relative tolerance
        ("52_8", "52_{8}", True),
        ("52_8", "52", True),
        ("52_8", "52_9", False),  # math-verify drops the base
        ("52_8", "42", False),
        ("x_1", "x_2", None),  # not a base-2..36 numeral: math-verify decides
        ("\\frac{1}{2}", "0.5", None),
    ],
)
def test_compare_plain(gold, pred, expected):
    assert compare_plain(gold, pred) is expected
