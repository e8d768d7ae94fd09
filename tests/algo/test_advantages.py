"""Group advantages: worked examples, edge cases (G = 1, all-equal groups) and invariances."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_codistill.algo import group_whiten, overlong_penalty, process_supervision_advantages


def test_group_whiten_worked_example():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    a = group_whiten(r, 4)
    s = math.sqrt(1 / 3)  # Bessel std of (1, 0, 0, 1)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]) / (s + 1e-6)
    assert torch.allclose(a, expected, atol=1e-6)
    assert torch.equal(
        group_whiten(r, 4, scale_by_std=False), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    )


def test_single_rollout_groups_and_equal_groups_are_zero_not_nan():
    assert torch.equal(group_whiten(torch.tensor([3.0, -1.0, 7.0]), 1), torch.zeros(3))
    assert torch.equal(group_whiten(torch.full((4,), 0.7), 2), torch.zeros(4))
    assert group_whiten(torch.zeros(0), 4).numel() == 0


def test_group_whiten_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"rewards has 5 rows, not a multiple of group_size \(2\)"):
        group_whiten(torch.zeros(5), 2)
    with pytest.raises(ValueError, match=r"must be \[B\*G\]"):
        group_whiten(torch.zeros(2, 2), 2)


def test_process_supervision_worked_example():
    step_rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    step_mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    a = process_supervision_advantages(step_rewards, step_mask, mask, 2)
    s = math.sqrt(1 / 3)  # steps {1, 0, 1}: mean 2/3
    hi, lo = (1 / 3) / (s + 1e-6), (-2 / 3) / (s + 1e-6)
    assert torch.allclose(a, torch.tensor([[hi + lo, lo, lo], [hi, hi, 0.0]]), atol=1e-6)
    centred = process_supervision_advantages(step_rewards, step_mask, mask, 2, scale_by_std=False)
    assert torch.allclose(centred, torch.tensor([[-1 / 3, -2 / 3, -2 / 3], [1 / 3, 1 / 3, 0.0]]))


def test_process_supervision_groups_are_separate_and_degenerate_cases_are_zero():
    # group 0: one step in total -> 0; group 1: no steps -> 0; padding values are ignored
    step_rewards = torch.tensor([[5.0, float("nan")], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    step_mask = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    assert torch.equal(process_supervision_advantages(step_rewards, step_mask, mask, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"outside the response mask in rows \[0\]"):
        process_supervision_advantages(
            step_rewards, torch.tensor([[0.0, 1.0], [0, 0], [0, 0], [0, 0]]), mask, 2
        )


def test_process_supervision_with_one_final_step_is_outcome_supervision():
    """One step per response, at its last token: every token gets that response's whitened reward."""
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    last = torch.zeros_like(mask)
    last[torch.arange(4), mask.sum(1).long() - 1] = 1.0
    a = process_supervision_advantages(r[:, None] * last, last, mask, 4)
    assert torch.allclose(a, group_whiten(r, 4)[:, None] * mask, atol=1e-6)


def test_overlong_penalty():
    p = overlong_penalty(torch.tensor([0, 6, 8, 10, 12]), max_length=10, buffer=4, penalty=1.0)
    assert torch.allclose(p, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))
    assert torch.allclose(
        overlong_penalty(torch.tensor([9]), max_length=10, buffer=4, penalty=0.5), torch.tensor([-0.375])
    )
    with pytest.raises(ValueError, match=r"overlong buffer \(0\)"):
        overlong_penalty(torch.tensor([1]), max_length=10, buffer=0)


rewards_st = st.integers(1, 4).flatmap(
    lambda g: st.tuples(
        st.just(g),
        st.lists(st.integers(-5, 5), min_size=g, max_size=4 * g).map(lambda xs: xs[: len(xs) - len(xs) % g]),
    )
)


@settings(max_examples=80, deadline=None)
@given(gr=rewards_st, shift=st.floats(-1e3, 1e3), scale=st.floats(0.1, 100.0))
def test_whitening_invariant_to_shift_and_positive_scale(gr, shift, scale):
    g, xs = gr
    r = torch.tensor(xs, dtype=torch.float64)
    a = group_whiten(r, g)
    b = group_whiten(scale * r + shift, g)
    # integer rewards: a non-constant group has std >= 0.4, so eps = 1e-6 moves A by < 1e-4
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.isfinite(b).all()
    dr_a, dr_b = (
        group_whiten(r, g, scale_by_std=False),
        group_whiten(scale * r + shift, g, scale_by_std=False),
    )
    assert torch.allclose(dr_b, scale * dr_a, atol=1e-9 * (1 + abs(shift)) * scale)
    if r.numel():
        assert torch.allclose(
            a.view(-1, g).sum(1), torch.zeros(r.numel() // g, dtype=torch.float64), atol=1e-9
        )
