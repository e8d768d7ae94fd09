"""Steps of a response cut by delimiters, on token pieces, and the exact step labels of the arithmetic task."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_codistill.rewards.steps import Step, exact_step_labels, split_steps, split_text

ARITH = [",", ";"]


def test_split_text_worked_example_and_longest_delimiter_first():
    assert split_text("39,25;05", ARITH) == [(3, "39,"), (6, "25;"), (8, "05")]
    assert split_text("a\n\nb\nc", ["\n", "\n\n"]) == [(3, "a\n\n"), (5, "b\n"), (6, "c")]
    assert split_text("39,  ", ARITH) == [(3, "39,")]  # a whitespace tail is no step
    assert split_text("", ARITH) == []


def test_split_steps_maps_step_ends_to_tokens():
    # multi-character tokens: "39" "," ends step 0 at token 1; "\n" + "\n" completes "\n\n" at token 4
    pieces = ["39", ",", "25", "\n", "\n", "0", "5", ""]
    steps = split_steps(pieces, [",", "\n\n"])
    assert steps == [Step(1, "39,"), Step(4, "25\n\n"), Step(7, "05")]  # the open last step runs to EOS
    # a delimiter inside one token: the step ends at that token
    assert split_steps(["3,9", "0"], [","]) == [Step(0, "3,"), Step(1, "90")]
    # a response that ends on a delimiter then EOS: the step ends at the delimiter, not at EOS
    assert split_steps(["1", ";", ""], ARITH) == [Step(1, "1;")]
    # ";3" closes a step and holds all of the last one: one token carries one reward, so they merge
    assert split_steps(["1", ";3"], ARITH) == [Step(1, "1;3", parts=2)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["1", "2", ",", ";", "12", "2,", ";3", ""]), max_size=12))
def test_steps_cover_the_text_and_end_on_their_tokens(pieces):
    steps = split_steps(pieces, ARITH)
    text = "".join(pieces)
    assert "".join(s.text for s in steps) == text.rstrip() if text.strip() else steps == []
    ends = [s.end for s in steps]
    assert ends == sorted(set(ends))  # one step per token at most
    seen = 0
    for s in steps:
        upto = "".join(pieces[: s.end + 1])
        seen += len(s.text)
        assert len(upto) >= seen  # the step's last character is in its end token or before


def test_exact_labels_of_the_arith_task():
    gold = "3900,2510,1400;0582"  # 123 + 459
    steps = split_steps(list("3900,2511,1400;0583"), ARITH)
    assert [s.text for s in steps] == ["3900,", "2511,", "1400;", "0583"]
    assert exact_step_labels(steps, gold, ARITH) == [1.0, 0.0, 1.0, 0.0]
    assert exact_step_labels(split_steps(list(gold), ARITH), gold, ARITH) == [1.0] * 4
    extra = split_steps(list("3900,2510,1400,0000;0582"), ARITH)
    assert exact_step_labels(extra, gold, ARITH) == [1.0, 1.0, 0.0, 0.0, 0.0]
    # a merged step is right when it equals as many gold steps
    merged = [Step(4, "3900,"), Step(9, "2510,1400;", parts=2), Step(13, "0582")]
    assert exact_step_labels(merged, gold, ARITH) == [1.0, 1.0, 1.0]
    # with "," only, "1400;0582" is one step
    assert exact_step_labels(split_steps(list("3900,2510,1400;0582"), [","]), gold, [","]) == [1.0] * 3


def test_bad_delimiters_are_refused():
    with pytest.raises(ValueError, match="step_delimiters"):
        split_text("a", [""])
    with pytest.raises(ValueError, match="step_delimiters"):
        split_text("a", [])
