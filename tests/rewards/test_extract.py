import pytest

from megatron_codistill.rewards.extract import (
    answer_is,
    answer_tag,
    extract_answer,
    gsm8k_answer,
    last_boxed,
    reference_answer,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\fbox{7}", "7"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not group
        ("\\boxed{4} and a cut-off \\boxed{5", "4"),  # truncated last box: the last complete one
        ("$\\boxed 5$.", "5"),
        ("\\boxed{}", None),
        ("no box here", None),
        ("\\boxedx{3}", None),  # another command
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_last_boxed_on_noise_is_linear():
    # 100 kB of unbalanced boxes: a quadratic scan would take minutes
    assert last_boxed("\\boxed{{" * 12_500) is None
    assert last_boxed("\\boxed{{" * 12_500 + "}" * 25_000) == "{}"  # the innermost, last box


def test_markers():
    assert answer_tag("<think>x</think> <answer> 42 </answer>") == "42"
    assert answer_tag("<answer>1</answer> <answer>2</answer>") == "2"
    assert answer_tag("<answer>unclosed") is None
    assert gsm8k_answer("work\n#### 1,234\n") == "1,234"
    assert gsm8k_answer("####   ") is None
    assert answer_is("So the answer is 3.5. Done") == "3.5"
    assert answer_is("The final answer is: $x=2$\nmore") == "$x=2$"


@pytest.mark.parametrize(
    "text, answer, method",
    [
        ("<answer>The result is \\boxed{7}</answer>", "7", "answer_tag"),
        ("<answer> 9 </answer> \\boxed{8}", "9", "answer_tag"),
        ("\\boxed{8} #### 9", "8", "boxed"),
        ("#### 9\nThe answer is 10.", "9", "gsm8k"),
        ("Therefore the answer is 10.", "10", "answer_is"),
        ("So the answer is 18 dollars.", "18", "answer_is"),  # plain-text unit words dropped
        ("work\n#### 1,200 eggs", "1,200", "gsm8k"),
        ("The answer is x = 5.", "x = 5", "answer_is"),
        ("I give up", None, "none"),
    ],
)
def test_extract_answer_priority(text, answer, method):
    found = extract_answer(text)
    assert (found.answer, found.method) == (answer, method)


def test_reference_answer():
    assert reference_answer("so \\boxed{4.5e33} ergs") == "4.5e33"
    assert reference_answer("He gets 3\n#### 3") == "3"
    assert reference_answer("  \\frac{1}{2} ") == "\\frac{1}{2}"
