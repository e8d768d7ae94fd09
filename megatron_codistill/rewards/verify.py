"""Score one (response, reference) pair with math-verify, in the calling process.

This is the function the verifier workers run (`pool.py`); it is safe only in a process's main thread,
because the time budget is a SIGALRM timer, like math-verify's own. Nothing here raises on model output:
every outcome is a `RewardResult` with a reason.
"""

from __future__ import annotations

import logging
import signal
from functools import lru_cache

from megatron_codistill.rewards.base import RewardResult
from megatron_codistill.rewards.extract import extract_answer, reference_answer
from megatron_codistill.rewards.normalize import normalize_answer
from megatron_codistill.rewards.numeric import compare_plain

MAX_ANSWER_CHARS = 1000
"""Longer extracted answers are rejected unparsed: no real final answer is that long."""


class BudgetExceeded(BaseException):
    """Raised by the SIGALRM handler; a BaseException so math-verify's `except Exception` lets it through."""


def _on_alarm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise BudgetExceeded


def _parse(answer: str) -> list:
    """math-verify's parse of one already extracted, normalised answer.

    LaTeX extraction only, first match only: with its defaults, a failed LaTeX parse falls back to any
    number in the text (Minerva's `\\hbar \\omega(v+1/2) - ...` parses as 2); here it falls back to
    the answer string, compared by string equality.
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


def _quiet_math_verify() -> None:
    # its own alarms are off (the whole item has one budget here), so it would warn once per process
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)


def verify_answer(response: str, reference: str) -> RewardResult:
    """Extract, normalise and compare; no time limit (see `verify_with_budget`).

    Comparison, cheapest first: the same text (up to runs of spaces); plain numbers exactly
    (`numeric.compare_plain`); math-verify on the parsed expressions.
    """
    from math_verify import verify

    found = extract_answer(response)
    if found.answer is None:
        return RewardResult(0.0, "no_answer")
    if len(found.answer) > MAX_ANSWER_CHARS:
        return RewardResult(0.0, "too_long", found.answer[:100])
    gold_text, pred_text = normalize_answer(reference_answer(reference)), normalize_answer(found.answer)
    if " ".join(gold_text.split()) == " ".join(pred_text.split()):  # same text: no need for sympy
        return RewardResult(1.0, "correct", found.answer)
    ok = compare_plain(gold_text, pred_text)
    if ok is None:
        gold = _parse_gold(gold_text)
        if not gold:
            return RewardResult(0.0, "unparsable_reference", found.answer)
        pred = _parse(pred_text)
        ok = bool(pred) and verify(list(gold), pred, timeout_seconds=None)
    return RewardResult(1.0 if ok else 0.0, "correct" if ok else "wrong", found.answer)


def verify_with_budget(response: object, reference: object, budget_s: float) -> RewardResult:
    """`verify_answer` under a SIGALRM budget of `budget_s` seconds (main thread only).

    Never raises on model output: bad types, exceptions and an exceeded budget all give score 0.
    """
    if not isinstance(response, str) or not isinstance(reference, str):
        return RewardResult(0.0, "invalid_input")
    _quiet_math_verify()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, budget_s)
    try:
        return verify_answer(response, reference)
    except BudgetExceeded:
        return RewardResult(0.0, "timeout")
    except Exception as e:  # noqa: BLE001 - any failure on model output is a zero, never a crash
        return RewardResult(0.0, f"error:{type(e).__name__}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
