"""Verification in this process (the code each pool worker runs), reason by reason."""

import pytest

from megatron_codistill.rewards.verify import MAX_ANSWER_CHARS, verify_with_budget

POLAR = "\\left( 3, \\frac{\\pi}{2} \\right)"


@pytest.mark.parametrize(
    "response, reference, reason",
    [
        ("so \\boxed{\\frac{1}{2}}", "0.5", "correct"),
        ("so \\boxed{\\dfrac12}", "\\frac{1}{2}", "correct"),
        ("\\boxed{x=5}", "5", "correct"),  # an assignment matches its value (math-verify)
        ("\\boxed{5}", "x=5", "correct"),
        ("\\boxed{y=6}", "5", "wrong"),
        ("#### 1,234", "1234", "correct"),
        ("\\boxed{20\\%}", "20", "correct"),
        ("The answer is 18 dollars.", "18", "correct"),
        ("The answer is $18.", "He earns 9 * 2 = $18\n#### 18", "correct"),  # a GSM8K solution as reference
        ("<answer>\\left( 3, \\frac{\\pi}{2} \\right)</answer>", POLAR, "correct"),
        ("<answer>(3, \\pi/2)</answer>", POLAR, "correct"),
        ("\\boxed{1.6 \\times 10^{-19}}", "1.6e-19", "correct"),
        ("\\boxed{1.6 \\times 10^{-18}}", "1.6e-19", "wrong"),
        ("\\boxed{\\text{(C)}}", "\\text{(C)}", "correct"),
        ("\\boxed{\\hbar \\omega(v+1 / 2)}", "\\hbar  \\omega(v+1 / 2)", "correct"),  # same text: no sympy
        ("\\boxed{\\hbar \\omega(v+1 / 3)}", "\\hbar  \\omega(v+1 / 2)", "wrong"),
        ("no final answer", "3", "no_answer"),
        ("\\boxed{" + "1+" * MAX_ANSWER_CHARS + "1}", "3", "too_long"),
    ],
)
def test_reasons(response, reference, reason):
    result = verify_with_budget(response, reference, 5.0)
    assert result.reason == reason
    assert result.score == (1.0 if reason == "correct" else 0.0)


@pytest.mark.parametrize("response", [None, 3, ["\\boxed{3}"], b"\\boxed{3}"])
def test_non_strings_score_zero(response):
    assert verify_with_budget(response, "3", 5.0).reason == "invalid_input"


def test_budget_stops_a_runaway_parse():
    result = verify_with_budget("\\boxed{(10^{100})!}", "3", 0.5)
    assert (result.score, result.reason) == (0.0, "timeout")
    assert verify_with_budget("\\boxed{3}", "3", 0.5).score == 1.0  # the alarm was disarmed
