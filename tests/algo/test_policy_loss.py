"""Clipped surrogate, aggregations, GSPO ratios, KL estimators and entropy: hand-computed values,
gradients, and the expected gradient of each KL estimator by enumeration."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_codistill.algo import (
    AGGREGATIONS,
    PolicyLossOptions,
    aggregate,
    entropy_from_logits,
    kl_penalty,
    policy_loss,
)

NAN = float("nan")


def _leaf(x):
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_clipped_surrogate_hand_case_with_clip_fractions_and_gradient():
    # four tokens of one sequence, old log-prob 0, ratios e^lr; eps 0.2 / 0.28
    ratios = [1.5, 1.1, 0.5, 1.5]
    adv = _t([[1.0, 1.0, -1.0, -1.0]])
    logp = _leaf([[math.log(r) for r in ratios]])
    out = policy_loss(
        logp,
        torch.zeros_like(logp),
        adv,
        torch.ones(1, 4, dtype=torch.float64),
        options=PolicyLossOptions(eps_low=0.2, eps_high=0.28),
    )
    # objectives: min(1.5, 1.28) = 1.28 (clipped); 1.1; min(-0.5, -0.8) = -0.8 (clipped);
    # min(-1.5, -1.2) = -1.5
    assert math.isclose(out.loss.item(), -(1.28 + 1.1 - 0.8 - 1.5) / 4, rel_tol=1e-12)
    out.loss.backward()
    # d/dlogp of -(rho A)/4 = -rho A / 4 where unclipped; 0 where the clip is active
    assert torch.allclose(logp.grad, _t([[0.0, -1.1 / 4, 0.0, 1.5 / 4]]))
    assert out.metrics["loss/clip_frac"] == 0.5
    assert out.metrics["loss/clip_frac_high"] == 0.25 and out.metrics["loss/clip_frac_low"] == 0.25
    assert math.isclose(out.metrics["loss/ratio_mean"], sum(ratios) / 4, rel_tol=1e-12)
    assert out.metrics["loss/num_tokens"] == 4


def test_dual_clip_bounds_negative_advantage_objective():
    logp = _leaf([[math.log(5.0), math.log(2.0), math.log(5.0)]])
    adv = _t([[-1.0, -1.0, 1.0]])
    opts = PolicyLossOptions(dual_clip=3.0)
    out = policy_loss(logp, torch.zeros_like(logp), adv, torch.ones(1, 3, dtype=torch.float64), options=opts)
    # token 0: min(-5, -1.2) = -5 -> max(-5, -3) = -3 (dual clip); token 1: -2 (3 > 2); token 2: 1.2
    assert math.isclose(out.loss.item(), -(-3.0 - 2.0 + 1.2) / 3, rel_tol=1e-12)
    out.loss.backward()
    assert torch.allclose(logp.grad, _t([[0.0, 2.0 / 3, 0.0]]))
    assert math.isclose(out.metrics["loss/dual_clip_frac"], 1 / 3)


def test_aggregations_by_hand():
    x = _t([[1.0, 2.0, 3.0], [4.0, NAN, NAN], [7.0, 8.0, 9.0]])
    mask = _t([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert aggregate(x, mask, "token_mean").item() == 10 / 4
    assert aggregate(x, mask, "seq_mean_token_mean").item() == (2.0 + 4.0) / 2  # the empty row is not counted
    assert aggregate(x, mask, "seq_mean_token_sum_norm", max_length=5).item() == 10 / (3 * 5)
    assert aggregate(x, mask, "token_mean", denominator=8).item() == 10 / 8
    assert aggregate(x, mask, "seq_mean_token_mean", denominator=4).item() == 6 / 4
    assert aggregate(x, mask, "seq_mean_token_sum_norm", max_length=5, denominator=6).item() == 10 / 30
    with pytest.raises(ValueError, match="needs max_length"):
        aggregate(x, mask, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match=r"aggregation 'mean' is not one of \['seq_mean_token_mean'"):
        aggregate(x, mask, "mean")


def test_micro_batches_with_global_denominator_add_up_to_the_full_batch():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    old = logp.detach() + 0.3 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(6, generator=g, dtype=torch.float64)
    mask = (torch.rand(6, 5, generator=g) > 0.3).to(torch.float64)
    mask[:, 0] = 1
    for agg, count in [("token_mean", mask.sum()), ("seq_mean_token_mean", 6.0)]:
        opts = PolicyLossOptions(aggregation=agg)
        full = policy_loss(logp, old, adv, mask, options=opts).loss
        parts = sum(
            policy_loss(logp[s], old[s], adv[s], mask[s], options=opts, denominator=count).loss
            for s in (slice(0, 2), slice(2, 6))
        )
        assert torch.allclose(full, parts, atol=1e-12), agg


def test_gspo_ratio_is_the_sequence_geometric_mean_and_token_variant_matches_its_value():
    logp = _leaf([[math.log(2.0), math.log(0.5), math.log(4.0), 0.0]])
    mask = _t([[1.0, 1.0, 1.0, 0.0]])
    adv = _t([1.0])
    opts = dict(eps_low=10.0 / 11, eps_high=10.0)  # no clipping, to expose the ratio itself
    seq = policy_loss(
        logp, torch.zeros_like(logp), adv, mask, options=PolicyLossOptions(ratio="gspo", **opts)
    )
    s = 4.0 ** (1 / 3)  # exp(mean(log 2, log 0.5, log 4))
    assert math.isclose(seq.loss.item(), -s, rel_tol=1e-12)
    (g_seq,) = torch.autograd.grad(seq.loss, logp)
    assert torch.allclose(g_seq, _t([[-s / 3, -s / 3, -s / 3, 0.0]]))  # d s / d l_t = s / |o|, mean over 3
    tok = policy_loss(
        logp, torch.zeros_like(logp), adv, mask, options=PolicyLossOptions(ratio="gspo_token", **opts)
    )
    assert math.isclose(tok.loss.item(), -s, rel_tol=1e-12)
    (g_tok,) = torch.autograd.grad(tok.loss, logp)
    assert torch.allclose(g_tok, _t([[-s / 3, -s / 3, -s / 3, 0.0]]))  # token mean of s * grad l_t
    # with per-token advantages the token variant weighs each token's gradient by its own advantage
    adv_t = _t([[1.0, 2.0, 0.0, 0.0]])
    tok2 = policy_loss(
        logp, torch.zeros_like(logp), adv_t, mask, options=PolicyLossOptions(ratio="gspo_token", **opts)
    )
    (g_tok2,) = torch.autograd.grad(tok2.loss, logp)
    assert torch.allclose(g_tok2, _t([[-s / 3, -2 * s / 3, 0.0, 0.0]]))


def test_gspo_clip_is_per_sequence():
    # sequence ratio exp(mean(log 1.5, 0)) = 1.2247 > 1 + 0.2: clipped for A > 0, no gradient at all
    logp = _leaf([[math.log(1.5), 0.0]])
    out = policy_loss(
        logp,
        torch.zeros_like(logp),
        _t([1.0]),
        torch.ones(1, 2, dtype=torch.float64),
        options=PolicyLossOptions(ratio="gspo"),
    )
    assert math.isclose(out.loss.item(), -1.2, rel_tol=1e-12)
    (g,) = torch.autograd.grad(out.loss, logp)
    assert g.abs().sum() == 0 and out.metrics["loss/clip_frac"] == 1.0


def test_kl_estimators_by_hand_and_in_the_loss():
    logp, ref = _leaf([[math.log(0.5), 9.0]]), _t([[math.log(0.25), NAN]])
    mask = _t([[1.0, 0.0]])
    ln2 = math.log(2)
    expected = {"k1": ln2, "k2": ln2**2 / 2, "k3": 0.5 + ln2 - 1}
    for name, value in expected.items():
        kl = kl_penalty(logp, ref, mask, name)
        assert math.isclose(kl[0, 0].item(), value, rel_tol=1e-12) and kl[0, 1] == 0
    out = policy_loss(
        logp,
        logp.detach(),
        _t([0.0]),
        mask,
        ref_logp=ref,
        options=PolicyLossOptions(kl_beta=0.1, kl_estimator="k3"),
    )
    assert math.isclose(out.loss.item(), 0.1 * expected["k3"], rel_tol=1e-12)
    assert math.isclose(out.metrics["loss/kl"], expected["k3"], rel_tol=1e-12)
    with pytest.raises(ValueError, match="needs ref_logp"):
        policy_loss(logp, logp.detach(), _t([0.0]), mask, options=PolicyLossOptions(kl_beta=0.1))


def test_kl_estimators_expected_values_and_gradients_by_enumeration():
    """Over x ~ pi (weights held fixed): E[k1] = E[k3] = KL(pi || ref); grad E[k1] = 0,
    grad E[k2] = grad KL(pi || ref), grad E[k3] = grad KL(ref || pi)."""
    theta = torch.tensor([0.3, -1.0, 0.8], dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.tensor([1.0, 0.2, -0.5], dtype=torch.float64), -1)
    logp = torch.log_softmax(theta, -1)
    p = logp.exp().detach()
    mask = torch.ones(3, 1, dtype=torch.float64)
    kl_fwd = (logp.exp() * (logp - ref)).sum()  # KL(pi || ref)
    kl_rev = (ref.exp() * (ref - logp)).sum()  # KL(ref || pi)
    grad = lambda y: torch.autograd.grad(y, theta, retain_graph=True)[0]  # noqa: E731
    e = {k: (p[:, None] * kl_penalty(logp[:, None], ref[:, None], mask, k)).sum() for k in ("k1", "k2", "k3")}
    assert torch.allclose(e["k1"], kl_fwd) and torch.allclose(e["k3"], kl_fwd)
    assert grad(e["k1"]).abs().max() < 1e-12
    assert torch.allclose(grad(e["k2"]), grad(kl_fwd), atol=1e-12)
    assert torch.allclose(grad(e["k3"]), grad(kl_rev), atol=1e-12)


def test_entropy_metric():
    logits = torch.log(torch.tensor([[[0.5, 0.5, 1e-30], [1.0, 1e-30, 1e-30]]]))
    h = entropy_from_logits(logits)
    assert torch.allclose(h, torch.tensor([[math.log(2), 0.0]]), atol=1e-6)
    out = policy_loss(
        torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), torch.tensor([[1.0, 0.0]]), entropy=h
    )
    assert math.isclose(out.metrics["policy/entropy"], math.log(2), rel_tol=1e-6)


def test_garbage_at_masked_positions_and_empty_rows_give_finite_loss_and_gradient():
    logp = _leaf([[-1.0, -math.inf, NAN], [NAN, NAN, NAN]])
    old = _t([[-1.2, 5.0, -math.inf], [NAN, 1.0, 2.0]])
    mask = _t([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    for agg in AGGREGATIONS:
        for ratio in ("token", "gspo", "gspo_token"):
            out = policy_loss(
                logp,
                old,
                _t([1.0, -1.0]),
                mask,
                ref_logp=old,
                options=PolicyLossOptions(aggregation=agg, ratio=ratio, max_length=3, kl_beta=0.1),
            )
            (g,) = torch.autograd.grad(out.loss, logp)
            assert torch.isfinite(out.loss) and torch.isfinite(g).all(), (agg, ratio)
            assert g[0, 1:].abs().sum() == 0 and g[1].abs().sum() == 0
            assert all(math.isfinite(float(v)) for v in out.metrics.values())


def test_options_validation_messages():
    with pytest.raises(ValueError, match=r"dual_clip \(1.0\) must be > 1"):
        PolicyLossOptions(dual_clip=1.0)
    with pytest.raises(ValueError, match=r"ratio 'seq' is not one of \['gspo', 'gspo_token', 'token'\]"):
        PolicyLossOptions(ratio="seq")
    with pytest.raises(ValueError, match=r"kl_estimator 'k4'"):
        PolicyLossOptions(kl_estimator="k4")
    with pytest.raises(ValueError, match="needs max_length"):
        PolicyLossOptions(aggregation="seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match=r"advantages must be \[B\] or \[B, T\]"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 2), torch.ones(2, 3))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(1, 5),
    width=st.integers(1, 6),
    token_adv=st.booleans(),
    agg=st.sampled_from(sorted(AGGREGATIONS)),
)
def test_ratio_one_without_clip_is_the_advantage_weighted_mean(seed, rows, width, token_adv, agg):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(rows, width, generator=g, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(rows, width, generator=g) > 0.4).to(torch.float64)
    adv = torch.randn(rows, width, generator=g, dtype=torch.float64)
    if not token_adv:
        adv = adv[:, 0]
    out = policy_loss(
        logp, logp.detach(), adv, mask, options=PolicyLossOptions(aggregation=agg, max_length=7)
    )
    a = adv if token_adv else adv[:, None].expand(rows, width)
    n = mask.sum(1)
    if agg == "token_mean":
        expected = (a * mask).sum() / max(mask.sum().item(), 1)
    elif agg == "seq_mean_token_mean":
        expected = ((a * mask).sum(1) / n.clamp(min=1)).sum() / max(int((n > 0).sum()), 1)
    else:
        expected = (a * mask).sum() / (rows * 7)
    assert torch.allclose(out.loss, -expected, atol=1e-12)
    # and its gradient is the same weighting of grad log pi
    (grad,) = torch.autograd.grad(out.loss, logp)
    (grad_ref,) = torch.autograd.grad(-aggregate(a * logp, mask, agg, max_length=7), logp)
    assert torch.allclose(grad, grad_ref, atol=1e-12)
