"""Answers with several items (multisets, ordered tuples, named items), units and percent with LaTeX
spacing, and a reason (with the extracted answer) on every result. In-process: the code each worker runs."""

import random
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_codistill.rewards import verify
from megatron_codistill.rewards.structure import split_top_level
from megatron_codistill.rewards.verify import POINTS, verify_with_budget


def reason(answer: str, gold: str) -> str:
    return verify_with_budget(f"so \\boxed{{{answer}}}", gold, 30.0).reason


@pytest.mark.parametrize(
    "answer, gold, expected",
    [
        # the cases: a bare list is a multiset, not a set
        ("-2", "-2,-2", "wrong"),
        ("-2, -2", "-2,-2", "correct"),
        ("16, 3, 1", "16,3,1,1", "wrong"),
        ("1, 1, 3, 16", "16,3,1,1", "correct"),
        ("2", "2,2,2", "wrong"),
        ("2,2,2", "2, 2, 2", "correct"),
        ("1, 1, 2", "1, 2, 2", "wrong"),
        ("3, 5, 7", "7, 5, 3", "correct"),
        ("\\frac12, 3", "3, 0.5", "correct"),
        ("\\{1, -2\\}", "1,-2", "correct"),
        ("[1, -2]", "1,-2", "correct"),
        ("1, -2, -2", "1,-2", "wrong"),
        ("5, 5", "5", "wrong"),
        ("1+\\sqrt{5}, 1-\\sqrt{5}, -2", "1\\pm\\sqrt{5},-2", "correct"),
        ("1+\\sqrt{5}, -2", "1\\pm\\sqrt{5},-2", "wrong"),
        ("\\sqrt{2}, -\\sqrt{2}", "\\pm\\sqrt{2}", "correct"),
        # a parenthesised gold is an ordered tuple
        ("(2, 1)", "(1, 2)", "wrong"),
        ("1, 2", "(1, 2)", "correct"),
        ("(x, y) = (1, 2)", "(1, 2)", "correct"),
        ("[1, 2]", "(1, 2)", "wrong"),
        ("(1, 2, 3)", "(1, 2)", "wrong"),
        ("(1, 2)", "(1, 2, 3)", "wrong"),
        ("\\left( \\frac{3}{2}, -13 \\right)", "(1.5, -13)", "correct"),
        # named items: by name when both sides name them, else in the gold's order
        ("b=3, a=-2", "a=-2, b=3", "correct"),
        ("a=3, b=-2", "a=-2, b=3", "wrong"),
        ("-2, 3", "a=-2, b=3", "correct"),
        ("3, -2", "a=-2, b=3", "wrong"),
        ("a=-2, b=-2", "-2,-2", "correct"),
        # intervals, unions and explicit sets are compared whole, by math-verify
        ("[2, 5)", "[2,5)", "correct"),
        ("(2, 5)", "[2,5]", "wrong"),
        ("[-2, 7]", "x \\in [-2,7]", "correct"),
        ("\\{2, 1\\}", "\\{1, 2\\}", "correct"),
        ("(0, 9) \\cup (9, 36)", "(0,9) \\cup (9,36)", "correct"),
    ],
)
def test_lists_tuples_and_named_items(answer, gold, expected):
    assert reason(answer, gold) == expected


@pytest.mark.parametrize(
    "answer, gold",
    [
        ("4.2", "4.2\\ \\%"),  # the case: the percent was only stripped after a plain space
        ("4.2", "4.2\\,\\%"),
        ("4.2", "4.2~\\%"),
        ("4.2", "4.2\\;\\text{\\%}"),
        ("4.2\\%", "4.2"),
        ("20", "20\\text{ percent}"),
        ("12", "12\\ \\text{cm}"),
        ("12\\,\\mathrm{cm}", "12"),
        ("12 \\text{ cm}", "12\\ \\text{cm}"),
        ("1\\,000", "1000"),
    ],
)
def test_units_and_percent_with_latex_spacing(answer, gold):
    assert reason(answer, gold) == "correct"


def test_percent_is_not_a_factor_of_a_hundred():
    assert reason("0.042", "4.2\\ \\%") == "wrong"  # MATH golds drop the percent sign: 4.2, not 0.042


@pytest.mark.parametrize(
    "response, gold, expected_reason, expected_extracted",
    [
        ("no final answer here", "3", "no_answer", None),
        ("so \\boxed{4}", "3", "wrong", "4"),
        ("so \\boxed{3}", "\\begin{cases} 3 \\end{cases}", "unparsable_reference", "3"),
        ("so \\boxed{@#!}", "3", "unparsable_answer", "@#!"),
        ("so \\boxed{3}", "3", "correct", "3"),
    ],
)
def test_every_result_has_a_reason_and_the_extracted_answer(response, gold, expected_reason, expected_extracted):
    r = verify_with_budget(response, gold, 30.0)
    assert (r.reason, r.extracted) == (expected_reason, expected_extracted)
    assert r.score == (1.0 if expected_reason == "correct" else 0.0)


@pytest.fixture
def fire_at():
    """Make the budget fire at one point of the next calls, through its real signal handler."""
    def install(point: str, raise_error: bool = False):
        def hook(p: str) -> None:
            if p == point:
                if raise_error:
                    raise ValueError("injected")
                signal.raise_signal(signal.SIGPROF)

        verify.set_fault_hook(hook)

    yield install
    verify.set_fault_hook(None)


@pytest.mark.parametrize("point", POINTS)
def test_a_budget_firing_anywhere_is_a_timeout_never_an_exception(fire_at, point):
    fire_at(point)
    r = verify_with_budget("so \\boxed{\\frac{2}{4}}", "\\frac{1}{2}", 30.0)
    # cleanup comes after a finished comparison: still a timeout, the call was interrupted
    assert (r.score, r.reason) == (0.0, "timeout")
    assert r.extracted == (None if point == "extract" else "\\frac{2}{4}")
    assert verify.budget_fired()


def test_an_exception_keeps_the_extracted_answer(fire_at):
    fire_at("verify", raise_error=True)
    r = verify_with_budget("so \\boxed{\\frac{2}{4}}", "\\frac{1}{2}", 30.0)
    assert (r.reason, r.extracted) == ("error:ValueError", "\\frac{2}{4}")


def test_split_top_level():
    assert split_top_level("(1, 2), 3, \\{4, 5\\}, \\frac{1}{2}") == ["(1, 2)", "3", "\\{4, 5\\}", "\\frac{1}{2}"]
    assert split_top_level("1\\,000, 2") == ["1\\,000", "2"]


ITEMS = st.one_of(
    st.integers(-30, 30).map(str),
    st.tuples(st.integers(1, 9), st.integers(2, 9)).map(lambda t: f"\\frac{{{t[0]}}}{{{t[1]}}}"),
    st.integers(2, 20).map(lambda n: f"\\sqrt{{{n}}}"),
    st.decimals(-20, 20, places=2, allow_nan=False, allow_infinity=False).map(str),
    st.integers(1, 5).map(lambda k: f"x^{{{k}}} + 1"),
    st.tuples(st.integers(-5, 5), st.integers(-5, 5)).map(lambda t: f"({t[0]}, {t[1]})"),
    st.integers(1, 9).map(lambda n: f"{n}{{,}}000"),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(ITEMS, min_size=2, max_size=5), tuple_gold=st.booleans(), seed=st.integers(0, 2**16),
       duplicate=st.booleans())
def test_dropping_or_duplicating_an_item_is_never_accepted(items, tuple_gold, seed, duplicate):
    rng = random.Random(seed)
    changed = list(items)
    i = rng.randrange(len(items))
    if duplicate:
        changed.insert(rng.randrange(len(changed) + 1) if not tuple_gold else i, items[i])
    else:
        del changed[i]
    if not tuple_gold:
        rng.shuffle(changed)  # any order: only the multiset could make it right
    wrap = (lambda xs: "(" + ", ".join(xs) + ")") if tuple_gold else (lambda xs: ", ".join(xs))
    assert verify_with_budget(f"so \\boxed{{{wrap(changed)}}}", wrap(items), 30.0).score == 0.0
    if not tuple_gold:  # the same items in another order are accepted: the rule is not "always wrong"
        same = list(items)
        rng.shuffle(same)
        assert verify_with_budget(f"so \\boxed{{{wrap(same)}}}", wrap(items), 30.0).reason == "correct"
