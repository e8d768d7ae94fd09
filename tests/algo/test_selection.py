"""PODS max-variance down-sampling (against brute force) and the DAPO dynamic-sampling filter."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_codistill.algo import max_variance_subset, nonconstant_groups


def _var(x: torch.Tensor) -> float:
    return float(((x - x.mean()) ** 2).mean())


def test_pods_worked_example_and_layout():
    r = torch.tensor([0.1, 0.9, 0.5, 0.0, 1.0, 0.4, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    idx = max_variance_subset(r, 6, 4)
    # prompt 0: two smallest + two largest; prompt 1 (five 1s and one 0): the 0 and three 1s,
    # variance 3/16, beats four 1s (0); rows are offset by 6 and ascending per prompt
    assert idx.tolist()[:4] == [0, 1, 3, 4]
    assert idx.tolist()[4:] == [6, 7, 8, 11]
    assert torch.equal(max_variance_subset(r, 6, 6), torch.arange(12))


def test_pods_rejects_bad_sizes():
    with pytest.raises(ValueError, match=r"keep \(7\) must be in \[1, group_size=6\]"):
        max_variance_subset(torch.zeros(6), 6, 7)


@settings(max_examples=80, deadline=None)
@given(
    xs=st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=8),
    data=st.data(),
)
def test_pods_matches_brute_force_maximum(xs, data):
    n = len(xs)
    m = data.draw(st.integers(1, n))
    r = torch.tensor(xs, dtype=torch.float64)
    chosen = max_variance_subset(r, n, m)
    assert chosen.tolist() == sorted(set(chosen.tolist())) and len(chosen) == m
    best = max(_var(r[list(c)]) for c in itertools.combinations(range(n), m))
    assert _var(r[chosen]) >= best - 1e-9 * (1 + best)


def test_nonconstant_groups():
    keep = nonconstant_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), 2)
    assert keep.tolist() == [False, True, False]
    assert nonconstant_groups(torch.tensor([1.0, 1.05]), 2, atol=0.1).tolist() == [False]
    assert nonconstant_groups(torch.tensor([1.0, 0.0]), 1).tolist() == [False, False]
