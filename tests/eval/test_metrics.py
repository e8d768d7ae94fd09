from itertools import combinations

import pytest

from megatron_codistill.eval.metrics import k_values, majority_correct, majority_votes, pass_at_k


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_hand_values_and_errors():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    assert pass_at_k(200, 0, 100) == 0.0
    with pytest.raises(ValueError, match="n=3, c=4, k=1"):
        pass_at_k(3, 4, 1)


@pytest.mark.parametrize(
    "answers, scores, expected",
    [
        (["2", "3", "2"], [1, 0, 1], True),
        (["3", "2", "3"], [0, 1, 0], False),
        (["3", "2"], [0, 1], False),  # a tie goes to the answer seen first
        (["2", "3"], [1, 0], True),
        ([None, None, "2"], [0, 0, 1], True),  # no answer does not vote
        ([None, None], [0, 0], False),
        (["1,000", "1000", "7"], [1, 1, 0], True),  # normalised answers vote together
        (["x = 2", "x=2", "3", "3", "3"], [1, 1, 0, 0, 0], False),
    ],
)
def test_majority_vote(answers, scores, expected):
    assert majority_correct(answers, [float(s) for s in scores]) is expected


def test_k_values():
    assert k_values(1) == [1]
    assert k_values(4) == [1, 2, 4]
    assert k_values(6) == [1, 2, 4, 6]


def test_majority_votes_group_wrong_answers_by_equivalence_in_batched_rounds():
    calls = []

    def same_value(pairs):  # an oracle: equal as numbers
        calls.append(len(pairs))
        return [float(a) == float(b) for a, b in pairs]

    problems = [
        (["205", "204", "205.0", "204", "2.05e2"], [0, 1, 0, 1, 0]),  # wrong 205 x3 beats correct x2
        (["205", "204", "205.0", "204", "204.00"], [0, 1, 0, 1, 1]),  # correct x3 beats 205 x2
        (["7", "8", "9"], [0, 0, 0]),  # no correct answer
    ]
    assert majority_votes(problems, same_value) == [False, True, False]
    assert [majority_correct(a, s) for a, s in problems] == [True, True, False]  # by text: 204 x2 wins
    # one batch per round; a round compares each problem's next distinct wrong answer with its groups so far:
    # round 1 has no groups yet; round 2: 205.0, 205.0, 8 against one group each; round 3: 2.05e2 against
    # the merged 205 group, 9 against the groups of 7 and 8
    assert calls == [1 + 1 + 1, 1 + 2]
