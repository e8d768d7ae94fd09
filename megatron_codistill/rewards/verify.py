"""Score one (response, reference) pair with math-verify, in the calling process, under a CPU budget.

This is the function the verifier workers run (`pool.py`); it is safe only in a process's main thread.

The budget counts CPU seconds of this process (`ITIMER_PROF`, delivered as SIGPROF), not wall-clock
seconds, so an answer gets the same budget, hence the same verdict, on a loaded machine as on an idle
one; it also never shares a timer with math-verify's own `signal.alarm` (switched off here).

Why math-verify is imported before any budget is armed: a budget that fires while `import sympy` runs
leaves `sys.modules` with a `sympy` package that lacks its submodule attributes (`sympy.assumptions`);
every later LaTeX parse in that process then fails and falls back to the bare string, so every answer
that is not the gold's exact text scores "wrong", whatever the budget of later calls. Interruptions
elsewhere (ANTLR's lazily built parser tables, sympy's caches) may leave damage of their own, so a
process whose budget ever fired says so (`budget_fired()`), and the pool retires such a worker before it
scores again.

Nothing here raises on model output: every outcome is a `RewardResult` with a reason and, when one was
found, the extracted answer.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from megatron_codistill.rewards.base import RewardResult
from megatron_codistill.rewards.extract import extract_answer, reference_answer
from megatron_codistill.rewards.normalize import normalize_answer
from megatron_codistill.rewards.numeric import compare_plain
from megatron_codistill.rewards.structure import compare_structured

MAX_ANSWER_CHARS = 1000
"""Longer extracted answers are rejected unparsed: no real final answer is that long."""

SELF_CHECK = (
    ("so \\boxed{\\frac{\\pi}{3}}", "\\pi/3", 1.0),
    ("so \\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    ("so \\boxed{\\frac{\\pi}{3}}", "\\pi/4", 0.0),
)
"""(response, reference, expected score) a worker must reproduce before it serves: two equivalent pairs
that need the LaTeX parser and sympy (a damaged parser makes them "wrong") and a different pair (a
comparison that accepts everything makes it "correct")."""

POINTS = ("extract", "parse_gold", "parse", "verify", "cleanup")
"""The points of a budgeted call where the fault hook is called (in this order)."""


class BudgetExceeded(BaseException):
    """Raised by the budget's signal handler; a BaseException so `except Exception` in math-verify and sympy
    lets it through."""


@dataclass
class _Budget:
    armed: bool = False
    """A fired budget raises only while armed; the handler disarms it, so it raises at most once per call."""
    fires: int = 0
    """Budgets that fired in this process, ever."""


_BUDGET = _Budget()
_fault_hook: Callable[[str], None] | None = None


def _on_budget(signum, frame):  # noqa: ARG001 - signal handler signature
    _BUDGET.fires += 1
    if _BUDGET.armed:
        _BUDGET.armed = False  # a second signal cannot land in the handlers below and escape
        raise BudgetExceeded


def budget_fired() -> bool:
    """Whether a budget ever fired in this process (its interpreter state may be damaged since)."""
    return _BUDGET.fires > 0


def set_fault_hook(hook: Callable[[str], None] | None) -> None:
    """Test hook: `hook(point)` runs at each of `POINTS` of every budgeted call (None removes it).

    A hook makes the budget fire at that exact point with `signal.raise_signal(signal.SIGPROF)`, which is
    how the fault-injection tests interrupt a worker deterministically.
    """
    global _fault_hook
    _fault_hook = hook


def _point(name: str) -> None:
    if _fault_hook is not None:
        _fault_hook(name)


def load_math_verify() -> None:
    """Import math-verify, sympy and the LaTeX parser completely (outside any budget: see the module doc)."""
    import math_verify  # noqa: F401
    import sympy  # noqa: F401

    for name in ("math_verify", "latex2sympy2_extended"):
        # its own alarms are off (the whole item has one budget here), so it would warn once per process
        logging.getLogger(name).setLevel(logging.ERROR)


def _parse(answer: str) -> list:
    """math-verify's parse of one already extracted, normalised answer.

    LaTeX extraction only, first match only: with its defaults, a failed LaTeX parse falls back to any
    number in the text (Minerva's `\\hbar \\omega(v+1/2) - ...` parses as 2); here it falls back to the
    answer string alone (in math-verify's normalisation: `\\dfrac` is `\\frac`), which `_parsed` treats as
    "not parsed" and `verify` compares as text.
    """
    from math_verify import LatexExtractionConfig, parse

    return parse(
        "$" + answer + "$",
        extraction_config=[LatexExtractionConfig()],
        extraction_mode="first_match",
        parsing_timeout=None,
    )


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    return tuple(_parse(gold))


def _parsed(values) -> bool:
    """Whether math-verify's parse produced a mathematical object (not only the answer's own string)."""
    return any(not isinstance(v, str) for v in values)


def compare_item(gold: str, pred: str) -> str:
    """"correct", "wrong", "unparsable_reference" or "unparsable_answer" for one normalised gold against one
    normalised prediction. Cheapest first: the same text (up to runs of spaces); plain numbers exactly
    (`numeric.compare_plain`); math-verify on the parsed expressions."""
    if " ".join(gold.split()) == " ".join(pred.split()):  # same text: no need for sympy
        return "correct"
    ok = compare_plain(gold, pred)
    if ok is not None:
        return "correct" if ok else "wrong"
    from math_verify import verify

    _point("parse_gold")
    gold_values = _parse_gold(gold)
    _point("parse")
    pred_values = _parse(pred)
    _point("verify")
    if verify(list(gold_values), pred_values, timeout_seconds=None):
        return "correct"  # a gold math-verify cannot parse still matches its own text after its normalisation
    if not _parsed(gold_values):
        return "unparsable_reference"
    return "wrong" if _parsed(pred_values) else "unparsable_answer"


def compare_answers(gold: str, pred: str) -> str:
    """`compare_item`, or item by item for answers with several items (`structure.compare_structured`)."""
    if " ".join(gold.split()) == " ".join(pred.split()):
        return "correct"
    structured = compare_structured(gold, pred, compare_item)
    return structured if structured is not None else compare_item(gold, pred)


@dataclass
class _Attempt:
    extracted: str | None = None


def verify_answer(response: str, reference: str, attempt: _Attempt | None = None) -> RewardResult:
    """Extract, normalise and compare; no time limit (see `verify_with_budget`)."""
    attempt = attempt if attempt is not None else _Attempt()
    _point("extract")
    found = extract_answer(response)
    if found.answer is None:
        return RewardResult(0.0, "no_answer")
    attempt.extracted = found.answer
    if len(found.answer) > MAX_ANSWER_CHARS:
        return RewardResult(0.0, "too_long", found.answer[:100])
    gold, pred = normalize_answer(reference_answer(reference)), normalize_answer(found.answer)
    reason = compare_answers(gold, pred)
    return RewardResult(1.0 if reason == "correct" else 0.0, reason, found.answer)


def verify_with_budget(response: object, reference: object, budget_s: float) -> RewardResult:
    """`verify_answer` within `budget_s` CPU seconds of this process (main thread only).

    Never raises on model output: bad types, exceptions and an exceeded budget all give score 0. A call
    during which the budget fired, wherever it landed (even in the cleanup after a finished comparison,
    or inside library code that swallowed the exception), is a "timeout".
    """
    if not isinstance(response, str) or not isinstance(reference, str):
        return RewardResult(0.0, "invalid_input")
    load_math_verify()
    attempt, result, fires = _Attempt(), None, _BUDGET.fires
    previous = signal.signal(signal.SIGPROF, _on_budget)
    # The handler raises at most once (it disarms itself), so the one BudgetExceeded of a call either
    # lands in the inner block, whose finally disarms the timer, or in that finally itself, after the
    # one-shot timer has already expired; the outer handler catches it in both cases.
    try:
        try:
            _BUDGET.armed = True
            signal.setitimer(signal.ITIMER_PROF, max(budget_s, 1e-6))
            result = verify_answer(response, reference, attempt)
        except Exception as e:  # noqa: BLE001 - any failure on model output is a zero, never a crash
            result = RewardResult(0.0, f"error:{type(e).__name__}", attempt.extracted)
        finally:
            _point("cleanup")
            _BUDGET.armed = False
            signal.setitimer(signal.ITIMER_PROF, 0)
    except BudgetExceeded:
        result = None
    signal.signal(signal.SIGPROF, previous)
    if result is None or _BUDGET.fires != fires:
        return RewardResult(0.0, "timeout", attempt.extracted)
    return result


verify_with_budget.self_check = SELF_CHECK  # type: ignore[attr-defined] - read by the worker's warm-up
