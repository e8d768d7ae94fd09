"""KD reward: hand-computed cases, the reference-conditioned alignment, and exact enumeration.

Enumeration identity tested (o ~ pi_S, d(o) = sum_t (l^L_t - l^S_t) = log pi_L(o) - log pi_S(o)):
    E_S[d] = -KL(pi_S || pi_L)
    E_S[sg(d) grad log pi_S(o)] = -grad KL(pi_S || pi_L)            (score-function term)
    E_S[grad_direct d] = -E_S[grad log pi_S] = 0                     (the term a stop-gradient drops)
so the policy-gradient loss -E_S[sg(KD) log pi_S], built by `policy_loss` with KD as the advantage,
has gradient exactly grad KL(pi_S || pi_L) (sum reduction), or half of it (mean over the 2 tokens).
"""

from __future__ import annotations

import math

import pytest
import torch

from megatron_codistill.algo import (
    PolicyLossOptions,
    align_responses,
    ghost_response_reward,
    kd_log_ratio,
    kd_reward,
    policy_loss,
    sequence_kd,
    token_kd_advantages,
)
from tests.algo.toy_policy import MASK, ToyPolicy, grad

# a plain sum over tokens: expectations are written as sum_o p(o) * (...) through `weights`
SUM = PolicyLossOptions(aggregation="seq_mean_token_sum_norm", max_length=1)
NAN = float("nan")


def test_kd_log_ratio_masks_and_detaches():
    teacher = torch.tensor([[math.log(0.5), -1.0, -math.inf]])
    student = torch.tensor([[math.log(0.25), -3.0, NAN]], requires_grad=True)
    d = kd_log_ratio(teacher, student, torch.tensor([[1.0, 1.0, 0.0]]))
    assert torch.allclose(d, torch.tensor([[math.log(2), 2.0, 0.0]]))
    assert not d.requires_grad


def test_sequence_kd_mean_sum_and_empty_rows():
    d = torch.tensor([[1.0, 3.0, NAN], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(sequence_kd(d, mask, "mean"), torch.tensor([2.0, 0.0]))
    assert torch.equal(sequence_kd(d, mask, "sum"), torch.tensor([4.0, 0.0]))
    with pytest.raises(ValueError, match=r"kd_reduction 'max' is not one of \['mean', 'sum'\]"):
        sequence_kd(d, mask, "max")


def test_kd_reward_clips_kd_only():
    r = kd_reward(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([-2.0, -30.0, 12.0]), alpha=0.5, kappa=10.0)
    assert torch.equal(r, torch.tensor([0.0, -5.0, 7.0]))
    with pytest.raises(ValueError, match="kappa"):
        kd_reward(torch.zeros(1), torch.zeros(1), alpha=0.5, kappa=0.0)


def test_token_kd_advantages():
    a = token_kd_advantages(
        torch.tensor([1.0, -1.0]),
        torch.tensor([[2.0, -4.0, NAN], [50.0, 0.0, 0.0]]),
        torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
        alpha=0.1,
        kappa=10.0,
    )
    assert torch.allclose(a, torch.tensor([[1.2, 0.6, 0.0], [0.0, 0.0, 0.0]]))


def test_align_responses_and_ghost_reward():
    t_logp = torch.tensor([[9.0, 9.0, -1.0, -2.0], [-0.5, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
    t_mask = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    s_logp = torch.tensor([[-3.0, -1.0, 7.0], [7.0, -2.5, 7.0], [1.0, 1.0, 1.0]])
    s_mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    moved = align_responses(t_logp, t_mask, s_mask)
    assert torch.equal(moved, torch.tensor([[-1.0, -2.0, 0.0], [0.0, -0.5, 0.0], [0.0, 0.0, 0.0]]))
    r = ghost_response_reward(t_logp, t_mask, s_logp, s_mask)
    assert torch.equal(r, torch.tensor([[2.0, -1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"different response lengths in rows \[1\]"):
        align_responses(t_logp, t_mask, torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))


def _kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) by enumeration over the 9 sequences."""
    return (p_logp.exp() * (p_logp - q_logp)).sum()


@pytest.mark.parametrize("reduction,factor", [("sum", 1.0), ("mean", 0.5)])
def test_kd_policy_gradient_equals_grad_reverse_kl_by_enumeration(reduction, factor):
    small, large = ToyPolicy(0, requires_grad=True), ToyPolicy(1, scale=2.0)
    l_s, l_l = small.token_logp(), large.token_logp().detach()
    p_s = l_s.sum(1).exp().detach()
    d = kd_log_ratio(l_l, l_s, MASK)
    kl = _kl(l_s.sum(1), l_l.sum(1))
    assert torch.allclose((p_s * d.sum(1)).sum(), -kl.detach(), atol=1e-12)  # E_S[d] = -KL(S || L)

    kd = sequence_kd(d, MASK, reduction)
    # the estimator at ratio 1 (old = current), each sequence weighted by its exact probability
    out = policy_loss(
        l_s, l_s.detach(), kd, MASK, options=SUM, weights=p_s[:, None].expand_as(MASK), denominator=1.0
    )
    g_estimator = grad(out.loss, small.parameters())
    g_kl = grad(kl, small.parameters())
    assert g_kl.norm() > 0.1
    assert torch.allclose(g_estimator, factor * g_kl, atol=1e-10)


def test_kd_direct_term_vanishes_in_expectation():
    small, large = ToyPolicy(2, requires_grad=True), ToyPolicy(3, scale=2.0)
    l_s = small.token_logp()
    d_with_grad = large.token_logp().detach() - l_s  # d not stopped: only its direct term carries gradient
    direct = (l_s.sum(1).exp().detach() * d_with_grad.sum(1)).sum()
    assert grad(direct, small.parameters()).abs().max() < 1e-12


def test_token_level_kd_gradient_is_per_position_kl_with_fixed_prefix():
    """E_S[sum_t sg(d_t) grad l^S_t] = -grad sum_t E_{o<t ~ sg(pi_S)} KL(pi_S(.|o<t) || pi_L(.|o<t)),
    which differs from -grad KL(pi_S || pi_L) over whole sequences (no credit for later tokens' d)."""
    small, large = ToyPolicy(4, requires_grad=True), ToyPolicy(5, scale=2.0)
    l_s, l_l = small.token_logp(), large.token_logp().detach()
    p_s = l_s.sum(1).exp().detach()
    d = kd_log_ratio(l_l, l_s, MASK)
    adv = token_kd_advantages(torch.zeros(9, dtype=torch.float64), d, MASK, alpha=1.0)
    out = policy_loss(
        l_s, l_s.detach(), adv, MASK, options=SUM, weights=p_s[:, None].expand_as(MASK), denominator=1.0
    )
    g_token = grad(out.loss, small.parameters())

    f_s, f_l = small.first_logp(), large.first_logp().detach()
    s_s, s_l = small.second_logp(), large.second_logp().detach()
    kl_first = (f_s.exp() * (f_s - f_l)).sum()
    kl_second = (s_s.exp() * (s_s - s_l)).sum(dim=1)  # [3], one per first token
    per_position = kl_first + (f_s.exp().detach() * kl_second).sum()
    assert torch.allclose(g_token, grad(per_position, small.parameters()), atol=1e-10)
    g_full = grad(_kl(small.seq_logp(), large.seq_logp().detach()), small.parameters())
    assert (g_token - g_full).abs().max() > 1e-3
