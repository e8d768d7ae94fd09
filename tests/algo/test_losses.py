"""The composed objectives: GRPO against a naive per-sample loop, CoDistill's small and large losses
against their definitions, and the degenerate batches (empty responses, G = 1, equal rewards)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from megatron_codistill.algo import (
    PolicyLossOptions,
    group_whiten,
    grpo_loss,
    importance_weights,
    large_model_loss,
    sft_loss,
    small_model_loss,
)

B, G, T = 3, 3, 4


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B * G, T, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    old = logp.detach() + 0.4 * torch.randn(B * G, T, generator=g, dtype=torch.float64)
    ref = logp.detach() + 0.3 * torch.randn(B * G, T, generator=g, dtype=torch.float64)
    lens = [4, 2, 1, 3, 0, 4, 2, 2, 3]  # row 4 is an empty response
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(T)] for n in lens], dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.0, 1.0, 0.25], dtype=torch.float64)
    return logp, old, ref, mask, rewards


def _naive_grpo(logp, old, ref, mask, rewards, opts: PolicyLossOptions):
    """One sample and one token at a time, with Python floats for the advantages."""
    adv = []
    for b in range(B):
        group = [float(x) for x in rewards[b * G : (b + 1) * G]]
        mu, sd = statistics.mean(group), statistics.stdev(group)
        adv += [(x - mu) / (sd + 1e-6) for x in group]
    total, per_seq, n_tokens, n_seqs = 0.0, 0.0, 0, 0
    for i in range(B * G):
        toks = [t for t in range(T) if mask[i, t] > 0]
        if not toks:
            continue
        seq_log_ratio = sum(logp[i, t] - old[i, t] for t in toks) / len(toks)
        seq_sum = 0.0
        for t in toks:
            if opts.ratio == "token":
                rho = torch.exp(logp[i, t] - old[i, t])
            elif opts.ratio == "gspo":
                rho = torch.exp(seq_log_ratio)
            else:  # gspo_token
                rho = torch.exp(seq_log_ratio.detach() + logp[i, t] - logp[i, t].detach())
            a = adv[i]
            obj = torch.minimum(rho * a, torch.clamp(rho, 1 - opts.eps_low, 1 + opts.eps_high) * a)
            if opts.dual_clip is not None and a < 0:
                obj = torch.maximum(obj, torch.tensor(opts.dual_clip * a, dtype=torch.float64))
            term = -obj
            if opts.kl_beta:
                delta = ref[i, t] - logp[i, t]
                kl = {"k1": -delta, "k2": delta**2 / 2, "k3": torch.exp(delta) - delta - 1}[opts.kl_estimator]
                term = term + opts.kl_beta * kl
            seq_sum = seq_sum + term
            n_tokens += 1
        total = total + seq_sum
        per_seq = per_seq + seq_sum / len(toks)
        n_seqs += 1
    if opts.aggregation == "token_mean":
        return total / n_tokens
    if opts.aggregation == "seq_mean_token_mean":
        return per_seq / n_seqs
    return total / (B * G * opts.max_length)


@pytest.mark.parametrize(
    "opts",
    [
        PolicyLossOptions(),
        PolicyLossOptions(eps_high=0.28, dual_clip=3.0, kl_beta=0.05, kl_estimator="k3"),
        PolicyLossOptions(aggregation="seq_mean_token_mean", kl_beta=0.1, kl_estimator="k1"),
        PolicyLossOptions(
            aggregation="seq_mean_token_sum_norm", max_length=6, kl_beta=0.1, kl_estimator="k2"
        ),
        PolicyLossOptions(ratio="gspo", eps_low=0.05, eps_high=0.05),
        PolicyLossOptions(ratio="gspo_token", eps_low=0.05, eps_high=0.05, aggregation="seq_mean_token_mean"),
    ],
    ids=["default", "dapo_dual_k3", "seqmean_k1", "drgrpo_k2", "gspo", "gspo_token"],
)
def test_grpo_loss_and_gradient_equal_a_naive_loop(opts):
    logp, old, ref, mask, rewards = _batch()
    out = grpo_loss(logp, old, rewards, mask, group_size=G, options=opts, ref_logp=ref)
    (g,) = torch.autograd.grad(out.loss, logp)
    naive = _naive_grpo(logp, old, ref, mask, rewards, opts)
    (g_naive,) = torch.autograd.grad(naive, logp)
    assert torch.allclose(out.loss, naive, atol=1e-12)
    assert torch.allclose(g, g_naive, atol=1e-12)
    assert out.metrics["loss/clip_frac"] > 0 or opts.ratio != "token"  # the clip is exercised


def test_small_model_loss_is_kd_shaping_then_whitening_then_surrogate():
    logp, old, _, mask, rewards = _batch(1)
    teacher = old + torch.linspace(-2.0, 1.0, B * G * T, dtype=torch.float64).view(B * G, T)
    out = small_model_loss(
        logp, old, teacher, rewards, mask, group_size=G, alpha=0.5, kappa=0.8, token_alpha=0.1
    )
    d = (teacher - old) * mask
    kd = d.sum(1) / mask.sum(1).clamp(min=1)
    adv = group_whiten(rewards + 0.5 * kd.clamp(-0.8, 0.8), G)[:, None] + 0.1 * d.clamp(-0.8, 0.8)
    rho = torch.exp((logp - old) * mask)
    obj = torch.minimum(rho * adv, rho.clamp(0.8, 1.2) * adv)
    expected = -(obj * mask).sum() / mask.sum()
    assert torch.allclose(out.loss, expected, atol=1e-12)
    has = mask.sum(1) > 0
    assert math.isclose(out.metrics["kd/reward_mean"], float(kd[has].mean()), rel_tol=1e-9)
    assert math.isclose(
        out.metrics["kd/clip_frac"], float((kd[has].abs() > 0.8).double().mean()), rel_tol=1e-9
    )
    assert math.isclose(out.metrics["reward/task_mean"], float(rewards.mean()), rel_tol=1e-9)
    assert math.isclose(out.metrics["adv/task_constant_group_frac"], 1 / 3, rel_tol=1e-6)  # (.5, .5, .5)
    plain = grpo_loss(logp, old, rewards, mask, group_size=G)
    assert set(plain.metrics) <= set(out.metrics)  # policy and advantage metrics are reported too


def test_small_model_loss_without_kd_is_grpo():
    logp, old, _, mask, rewards = _batch(2)
    a = small_model_loss(logp, old, old + 5.0, rewards, mask, group_size=G, alpha=0.0, token_alpha=0.0)
    b = grpo_loss(logp, old, rewards, mask, group_size=G)
    assert torch.allclose(a.loss, b.loss, atol=1e-12)


def test_large_model_loss_is_weighted_surrogate_over_kept_tokens():
    logp, old, _, mask, rewards = _batch(3)
    behaviour = old + 0.8 * torch.randn(
        B * G, T, generator=torch.Generator().manual_seed(9), dtype=torch.float64
    )
    for scheme in ("token_tis", "token_mis", "seq_geo", "seq_mis"):
        out = large_model_loss(
            logp, old, behaviour, rewards, mask, group_size=G, scheme=scheme, cap=2.0, seq_cap=3.0
        )
        iw = importance_weights(old, behaviour, mask, scheme=scheme, cap=2.0, seq_cap=3.0)
        adv = group_whiten(rewards, G)[:, None]
        rho = torch.exp((logp - old) * mask)
        obj = iw.weights * torch.minimum(rho * adv, rho.clamp(0.8, 1.2) * adv)
        expected = -(obj * iw.kept).sum() / iw.kept.sum().clamp(min=1)
        assert torch.allclose(out.loss, expected, atol=1e-12), scheme
        assert out.metrics["loss/num_tokens"] == iw.kept.sum()
        for k, v in iw.metrics.items():
            assert torch.equal(out.metrics[k], v)
    masked = large_model_loss(logp, old, behaviour, rewards, mask, group_size=G, scheme="token_mis")
    assert masked.metrics["is/masked_frac"] > 0  # the kept-token mean was exercised


@pytest.mark.parametrize("group_size", [1, 3])
def test_degenerate_batches_have_no_nan(group_size):
    """Empty responses, single-rollout groups, all-equal rewards, garbage padding: finite, zero-signal."""
    n = 3
    logp = torch.tensor(
        [[-1.0, float("nan")], [float("-inf"), float("nan")], [-0.5, -0.7]], requires_grad=True
    )
    old = torch.tensor([[-1.0, float("inf")], [0.0, float("nan")], [-0.4, -0.9]])
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    rewards = torch.full((n,), 0.5)
    opts = PolicyLossOptions(aggregation="seq_mean_token_sum_norm", max_length=2, kl_beta=0.1)
    outs = [
        grpo_loss(logp, old, rewards, mask, group_size=group_size, ref_logp=old, options=opts),
        small_model_loss(logp, old, old - 1.0, rewards, mask, group_size=group_size),
        large_model_loss(logp, old, old + 1.0, rewards, mask, group_size=group_size, scheme="seq_mis"),
    ]
    for out in outs:
        (g,) = torch.autograd.grad(out.loss, logp, allow_unused=False)
        assert torch.isfinite(out.loss) and torch.isfinite(g).all()
        assert all(math.isfinite(float(v)) for v in out.metrics.values()), out.metrics
    assert outs[0].metrics["adv/constant_group_frac"] == 1.0 and outs[0].metrics["adv/abs_mean"] == 0
    empty = torch.zeros(0, 2, requires_grad=True)
    e = large_model_loss(
        empty, empty.detach(), empty.detach(), torch.zeros(0), torch.zeros(0, 2), group_size=2
    )
    assert e.loss.item() == 0 and all(math.isfinite(float(v)) for v in e.metrics.values())


def test_reward_shape_errors_name_the_sizes():
    logp, old, _, mask, rewards = _batch()
    with pytest.raises(ValueError, match=r"rewards must be \[B\*G\]=9, got shape \(8,\)"):
        grpo_loss(logp, old, rewards[:8], mask, group_size=G)
    with pytest.raises(ValueError, match=r"not a multiple of group_size \(2\)"):
        grpo_loss(logp, old, rewards, mask, group_size=2)


def test_sft_loss_is_token_mean_nll():
    logp = torch.tensor([[-1.0, -3.0, float("nan")]], requires_grad=True)
    out = sft_loss(logp, torch.tensor([[1.0, 1.0, 0.0]]))
    assert out.loss.item() == 2.0 and out.metrics["loss/nll"] == 2.0
    (g,) = torch.autograd.grad(out.loss, logp)
    assert torch.equal(g, torch.tensor([[-0.5, -0.5, 0.0]]))


@pytest.mark.gpu
def test_composed_losses_on_cuda_match_cpu():
    logp, old, ref, mask, rewards = _batch(4)
    teacher, behaviour = old - 0.5, old + 0.3
    dev = torch.device("cuda")
    calls = [
        lambda x: grpo_loss(
            x[0], x[1], x[4], x[3], group_size=G, ref_logp=x[2], options=PolicyLossOptions(kl_beta=0.1)
        ),
        lambda x: small_model_loss(x[0], x[1], x[5], x[4], x[3], group_size=G, token_alpha=0.1),
        lambda x: large_model_loss(x[0], x[1], x[6], x[4], x[3], group_size=G, scheme="seq_geo"),
    ]
    cpu_args = (logp, old, ref, mask, rewards, teacher, behaviour)
    leaf = logp.detach().to(dev).requires_grad_(True)
    gpu_args = (leaf,) + tuple(t.to(dev) for t in cpu_args[1:])
    for call in calls:
        a, b = call(cpu_args), call(gpu_args)
        (ga,) = torch.autograd.grad(a.loss, logp)
        (gb,) = torch.autograd.grad(b.loss, leaf)
        assert torch.allclose(a.loss, b.loss.cpu(), atol=1e-10) and torch.allclose(ga, gb.cpu(), atol=1e-10)
        for k, v in a.metrics.items():
            assert torch.allclose(
                torch.as_tensor(v).double(), torch.as_tensor(b.metrics[k]).double().cpu(), atol=1e-8
            ), k
