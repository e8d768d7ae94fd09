"""Importance weights: hand-computed cases, metrics, the cap property, and exact enumeration.

Enumeration (large model L trained on samples of the small model S, fixed advantages A(o), ratio 1):
  on-policy gradient      g_on  = -E_{o~L}[A(o) grad log pi_L(o)]
  seq_mis, C_s = inf      E_{o~S}[W(o) A grad log pi_L(o)] = -g_on exactly (W = pi_L(o)/pi_S(o))
  seq_mis, finite C_s     bias = +E_{o~L}[1{W(o) outside [1/C_s, C_s]} A(o) grad log pi_L(o)]
  token_tis, C = inf      the expectation of sum_t w_t A grad l^L_t is the gradient under the mixed
                          measures q_t = S(prefix) L(o_t|prefix) S(suffix): biased w.r.t. g_on
  token_tis, finite C     bias w.r.t. the above = +sum_t E_{q_t}[(1 - C / w_t)_+ A grad l^L_t]
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_codistill.algo import SCHEMES, PolicyLossOptions, importance_weights, policy_loss
from tests.algo.toy_policy import MASK, SEQS, ToyPolicy, grad

SUM = PolicyLossOptions(aggregation="seq_mean_token_sum_norm", max_length=1)
L3, L05 = math.log(3.0), math.log(0.5)


def _weights(lam, mask=None, **kw):
    lam = torch.tensor(lam, dtype=torch.float64)
    mask = torch.ones_like(lam) if mask is None else torch.tensor(mask, dtype=torch.float64)
    return importance_weights(lam, torch.zeros_like(lam), mask, **kw)


def test_token_tis_hand_case_and_metrics():
    iw = _weights([[L3, L05, 7.0]], [[1.0, 1.0, 0.0]], scheme="token_tis", cap=2.0)
    assert torch.allclose(iw.weights, torch.tensor([[2.0, 0.5, 0.0]], dtype=torch.float64))
    assert torch.equal(iw.kept, torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64))
    m = iw.metrics
    assert math.isclose(m["is/log_ratio_mean"], (L3 + L05) / 2, rel_tol=1e-6)
    assert math.isclose(m["is/log_ratio_seq_mean"], L3 + L05, rel_tol=1e-6)
    assert math.isclose(m["is/truncated_frac"], 0.5) and m["is/masked_frac"] == 0
    assert math.isclose(m["is/weight_mean"], 1.25) and math.isclose(m["is/weight_max"], 2.0)
    assert m["is/ess"] == 1.0  # one sequence


def test_token_mis_drops_outside_band():
    iw = _weights([[L3, L05, math.log(0.4), 0.0]], scheme="token_mis", cap=2.0)
    assert torch.allclose(iw.weights, torch.tensor([[0.0, 0.5, 0.0, 1.0]], dtype=torch.float64))
    assert torch.equal(iw.kept, torch.tensor([[0.0, 1.0, 0.0, 1.0]], dtype=torch.float64))
    assert math.isclose(iw.metrics["is/masked_frac"], 0.5)
    assert math.isclose(iw.metrics["is/weight_mean"], 0.75)  # over kept tokens
    lower0 = _weights([[L3, math.log(0.4)]], scheme="token_mis", cap=2.0, lower=0.0)
    assert torch.allclose(lower0.weights, torch.tensor([[0.0, 0.4]], dtype=torch.float64))


def test_seq_geo_geometric_mean_capped():
    # row 0: mean(log 3, log 3) -> 3 capped at 2; row 1: mean(log 0.5, log 2) over 2 tokens -> 1;
    # row 2 is empty
    iw = _weights(
        [[L3, L3], [L05, math.log(2.0)], [5.0, 5.0]], [[1, 1], [1, 1], [0, 0]], scheme="seq_geo", cap=2.0
    )
    assert torch.allclose(iw.weights, torch.tensor([[2.0, 2.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64))
    assert math.isclose(iw.metrics["is/truncated_frac"], 0.5)
    # ESS over the two non-empty rows with W = (2, 1): 9 / (2 * 5)
    assert math.isclose(iw.metrics["is/ess"], 0.9, rel_tol=1e-6)


def test_seq_mis_uses_the_full_sequence_ratio():
    # row 0: 0.5 * 3 = 1.5 kept; row 1: 3 * 3 = 9 > C_s = 4 dropped; row 2: 0.5 * 0.6 = 0.3 kept (>= 1/4)
    iw = _weights([[L05, L3], [L3, L3], [L05, math.log(0.6)]], scheme="seq_mis", cap=100.0, seq_cap=4.0)
    expected = torch.tensor([[1.5, 1.5], [0.0, 0.0], [0.3, 0.3]], dtype=torch.float64)
    assert torch.allclose(iw.weights, expected)
    assert math.isclose(iw.metrics["is/masked_frac"], 1 / 3, rel_tol=1e-6)
    # applied weights (1.5, 0, 0.3): 1.8^2 / (3 * 2.34); raw ratios (1.5, 9, 0.3)
    assert math.isclose(iw.metrics["is/ess"], 1.8**2 / (3 * 2.34), rel_tol=1e-6)
    assert math.isclose(iw.metrics["is/ess_raw"], 10.8**2 / (3 * (2.25 + 81 + 0.09)), rel_tol=1e-6)


def test_all_dropped_empty_and_garbage_padding_give_no_nan():
    lam = torch.tensor([[50.0, -math.inf], [-math.inf, math.nan]])
    for scheme in SCHEMES:
        iw = importance_weights(
            lam,
            torch.zeros_like(lam),
            torch.tensor([[1.0, 0.0], [0.0, 0.0]]),
            scheme=scheme,
            cap=2.0,
            seq_cap=2.0,
        )
        assert torch.isfinite(iw.weights).all()
        assert all(math.isfinite(float(v)) for v in iw.metrics.values()), (scheme, iw.metrics)
    dropped = importance_weights(
        torch.full((2, 2), 9.0), torch.zeros(2, 2), torch.ones(2, 2), scheme="seq_mis"
    )
    assert dropped.weights.abs().sum() == 0 and dropped.metrics["is/ess"] == 0
    assert dropped.metrics["is/masked_frac"] == 1.0


def test_bad_names_and_caps_raise():
    with pytest.raises(
        ValueError, match=r"'seq_tis' is not one of \['seq_geo', 'seq_mis', 'token_mis', 'token_tis'\]"
    ):
        _weights([[0.0]], scheme="seq_tis")
    with pytest.raises(ValueError, match=r"cap \(0.5\) for 'token_tis' must be >= 1"):
        _weights([[0.0]], cap=0.5)


@settings(max_examples=60, deadline=None)
@given(
    lam=st.lists(st.floats(-1e3, 1e3), min_size=6, max_size=6),
    bits=st.lists(st.booleans(), min_size=6, max_size=6),
    cap=st.floats(1.0, 100.0),
    scheme=st.sampled_from(sorted(SCHEMES)),
)
def test_weights_never_exceed_their_cap(lam, bits, cap, scheme):
    lam_t = torch.tensor(lam).view(2, 3)
    mask = torch.tensor(bits, dtype=torch.float32).view(2, 3)
    iw = importance_weights(lam_t, torch.zeros_like(lam_t), mask, scheme=scheme, cap=cap, seq_cap=cap)
    w = iw.weights
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert (w <= cap * (1 + 1e-6)).all()
    assert (w[mask == 0] == 0).all()
    if scheme.endswith("mis"):  # kept weights sit inside [1/C, C]
        assert (w[w > 0] >= (1 / cap) * (1 - 1e-6)).all()


# ---------------------------------------------------------------- enumeration on the toy policy


def _setup(seed: int):
    large, small = ToyPolicy(seed, requires_grad=True), ToyPolicy(seed + 1, scale=1.5)
    adv = torch.randn(9, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return large, small.token_logp().detach(), adv


def _is_gradient(large, l_s, adv, **kw):
    """grad of -E_{o~S}[sum_t w_t A(o) l^L_t(o)] at ratio 1, via importance_weights + policy_loss."""
    l_l = large.token_logp()
    iw = importance_weights(l_l.detach(), l_s, MASK, **kw)
    p_s = l_s.sum(1).exp()
    out = policy_loss(
        l_l, l_l.detach(), adv, iw.kept, options=SUM, weights=p_s[:, None] * iw.weights, denominator=1.0
    )
    return grad(out.loss, large.parameters()), iw


def _expect_grad(large, measure, per_token_factor, adv):
    """grad of -sum_o sum_t measure_t(o) * factor_t(o) * A(o) * l^L_t(o): an independent expectation."""
    l_l = large.token_logp()
    return grad(-(measure * per_token_factor * adv[:, None] * l_l).sum(), large.parameters())


def test_sequence_weights_untruncated_give_the_on_policy_gradient():
    large, l_s, adv = _setup(10)
    g_is, iw = _is_gradient(large, l_s, adv, scheme="seq_mis", seq_cap=math.inf)
    assert iw.metrics["is/masked_frac"] == 0
    p_l = large.seq_logp().exp().detach()
    g_on = _expect_grad(large, p_l[:, None].expand_as(MASK), torch.ones_like(MASK), adv)
    assert g_on.norm() > 0.1
    assert torch.allclose(g_is, g_on, atol=1e-10)


def test_sequence_mis_bias_matches_analytic_value():
    large, l_s, adv = _setup(11)
    c = 8.0  # the 9 sequence ratios here span 0.02 .. 26
    g_is, iw = _is_gradient(large, l_s, adv, scheme="seq_mis", seq_cap=c)
    log_w = (large.seq_logp() - l_s.sum(1)).detach()
    outside = ((log_w > math.log(c)) | (log_w < -math.log(c))).to(torch.float64)
    assert 0 < outside.sum() < 9  # the test exercises both kept and dropped sequences
    p_l = large.seq_logp().exp().detach()
    g_on = _expect_grad(large, p_l[:, None].expand_as(MASK), torch.ones_like(MASK), adv)
    bias = -_expect_grad(large, p_l[:, None].expand_as(MASK), outside[:, None].expand_as(MASK), adv)
    assert bias.norm() > 1e-3
    assert torch.allclose(g_is - g_on, bias, atol=1e-10)


def _mixed_measures(large, l_s):
    """q_t(o) for t = 1, 2: the token-t estimator's sampling measure with a corrected token t."""
    l_l = large.token_logp().detach()
    q1 = (l_l[:, 0] + l_s[:, 1]).exp()  # L(o1) S(o2 | o1)
    q2 = (l_s[:, 0] + l_l[:, 1]).exp()  # S(o1) L(o2 | o1)
    return torch.stack([q1, q2], dim=1), l_l - l_s


def test_token_tis_untruncated_is_the_mixed_measure_gradient_not_the_on_policy_one():
    large, l_s, adv = _setup(12)
    g_is, _ = _is_gradient(large, l_s, adv, scheme="token_tis", cap=math.inf)
    q, _ = _mixed_measures(large, l_s)
    assert torch.allclose(g_is, _expect_grad(large, q, torch.ones_like(MASK), adv), atol=1e-10)
    p_l = large.seq_logp().exp().detach()
    g_on = _expect_grad(large, p_l[:, None].expand_as(MASK), torch.ones_like(MASK), adv)
    assert (g_is - g_on).abs().max() > 1e-3  # token-level correction is biased for sequence rewards


def test_token_tis_truncation_bias_matches_analytic_value():
    large, l_s, adv = _setup(13)
    c = 1.5
    g_trunc, iw = _is_gradient(large, l_s, adv, scheme="token_tis", cap=c)
    assert 0 < iw.metrics["is/truncated_frac"] < 1
    g_full, _ = _is_gradient(large, l_s, adv, scheme="token_tis", cap=math.inf)
    q, lam = _mixed_measures(large, l_s)
    excess = (1 - c / lam.exp()).clamp(min=0)
    bias = -_expect_grad(large, q, excess, adv)
    assert bias.norm() > 1e-3
    assert torch.allclose(g_trunc - g_full, bias, atol=1e-10)


def test_first_token_is_exactly_corrected_by_token_weights():
    """With an advantage that depends on the first token only, token 1's estimator is unbiased."""
    large, l_s, _ = _setup(14)
    adv = SEQS[:, 0].to(torch.float64) - 1.0
    l_l = large.token_logp()
    iw = importance_weights(l_l.detach(), l_s, MASK, scheme="token_tis", cap=math.inf)
    first_only = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand_as(MASK)
    p_s = l_s.sum(1).exp()
    out = policy_loss(
        l_l, l_l.detach(), adv, first_only, options=SUM, weights=p_s[:, None] * iw.weights, denominator=1.0
    )
    p_l = large.seq_logp().exp().detach()
    g_on = _expect_grad(large, p_l[:, None] * first_only, torch.ones_like(MASK), adv)
    assert torch.allclose(grad(out.loss, large.parameters()), g_on, atol=1e-10)
