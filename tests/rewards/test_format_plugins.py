import pytest

from megatron_codistill.rewards import R1RewardWeights, load_reward_fn, register_reward_fn, score_r1
from megatron_codistill.rewards.format_reward import format_parts
from megatron_codistill.rewards.plugins import REWARD_FUNCTIONS

W = R1RewardWeights()


@pytest.mark.parametrize(
    "response, think, answer",
    [
        ("<think>a</think> <answer>3</answer>", 0.25, 0.25),
        ("<think>a</think> <answer>3", 0.25, 0.0),
        ("a</think> 3</answer>", 0.25, 0.0),  # </answer> without <answer> does not count
        ("<answer>3</answer>", 0.0, 0.25),
        ("plain \\boxed{3}", 0.0, 0.0),
        (None, 0.0, 0.0),
    ],
)
def test_format_parts(response, think, answer):
    assert format_parts(response, W) == {"think_close": think, "answer_close": answer}


def test_r1_reward_sums_weighted_parts(pool):
    responses = [
        "<think>2+1</think> <answer>3</answer>",  # 1 + 0.25 + 0.25
        "<think>2+1</think> <answer>4</answer>",  # wrong: format only
        "<think>2+1 ... \\boxed{3}",  # correct, no </think>: 1.0
        12345,  # not text
    ]
    results = score_r1(responses, ["3"] * 4, pool=pool)
    assert [r.score for r in results] == [1.5, 0.5, 1.0, 0.0]
    assert results[0].parts == {"correct": 1.0, "think_close": 0.25, "answer_close": 0.25}
    assert [r.reason for r in results] == ["correct", "wrong", "correct", "invalid_input"]
    custom = R1RewardWeights(correct=2.0, think_close=0.0, answer_close=1.0)
    assert [r.score for r in score_r1(responses[:2], ["3", "3"], weights=custom, pool=pool)] == [3.0, 1.0]


def test_load_builtin_and_import_path():
    assert set(REWARD_FUNCTIONS) >= {"math", "r1"}
    fn = load_reward_fn("tests.rewards.helpers:length_reward")
    assert fn(["ab", "abcd"], ["", ""], prompts=["p", "q"]) == [2.0, 4.0]
    assert load_reward_fn(lambda r, ref, **_: [1] * len(r))(["x"], ["y"]) == [1.0]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope", r"unknown reward 'nope': use one of \['math', 'r1'"),
        ("tests.rewards.no_such_module:f", "cannot import module"),
        ("tests.rewards.helpers:missing", "has no attribute 'missing'"),
        ("tests.rewards.helpers:NOT_CALLABLE", "is a int, not a callable"),
        ("tests.rewards.helpers:", "must look like 'pkg.module:function'"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        load_reward_fn(spec)


def test_plugin_output_is_checked():
    with pytest.raises(ValueError, match="short_reward' gave 1 scores for 2 responses"):
        load_reward_fn("tests.rewards.helpers:short_reward")(["a", "b"], ["", ""])
    with pytest.raises(ValueError, match="non-finite scores at \\[1\\]"):
        load_reward_fn(lambda r, ref, **_: [0.0, float("nan")])(["a", "b"], ["", ""])


def test_register_reward_fn():
    register_reward_fn("test_constant", lambda r, ref, **_: [0.5] * len(r))
    try:
        assert load_reward_fn("test_constant")(["a"], ["b"]) == [0.5]
        with pytest.raises(ValueError, match="already registered"):
            register_reward_fn("test_constant", lambda r, ref, **_: [])
    finally:
        del REWARD_FUNCTIONS["test_constant"]
