"""Differential check against TRL's GRPO loss on identical inputs (skipped when trl is absent).

TRL computes the loss inside `GRPOTrainer._compute_loss(self, model, inputs)`, a method that reads
trainer state and runs the model. We call it with a stand-in `self` that carries exactly the
attributes it reads and whose log-prob hook returns our tensor, so TRL's own arithmetic runs on
our numbers. Mapping: TRL loss_type "bnpo" = token_mean, "grpo" = seq_mean_token_mean, "dr_grpo" =
seq_mean_token_sum_norm with L_max = max_completion_length; importance_sampling_level "sequence" =
GSPO; beta > 0 uses k3. (TRL averages empty rows into "grpo"; we use no empty rows here.)
"""

from __future__ import annotations

import collections
import types

import pytest
import torch

from megatron_codistill.algo import PolicyLossOptions, policy_loss

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")

B, T, EPS_LOW, EPS_HIGH = 6, 5, 0.2, 0.28
AGGREGATION = {"bnpo": "token_mean", "grpo": "seq_mean_token_mean", "dr_grpo": "seq_mean_token_sum_norm"}


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g) * 3).requires_grad_(True)
    old = logp.detach() + 0.3 * torch.randn(B, T, generator=g)
    ref = logp.detach() + 0.3 * torch.randn(B, T, generator=g)
    mask = torch.ones(B, T)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    adv = torch.randn(B, generator=g)
    return logp, old, ref, mask, adv


def _trl_loss(logp, old, ref, mask, adv, *, loss_type: str, level: str, beta: float):
    metrics = collections.defaultdict(lambda: collections.defaultdict(list))
    stub = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None),
        loss_type=loss_type,
        epsilon_low=EPS_LOW,
        epsilon_high=EPS_HIGH,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=T,
        _entropy_bonus_enabled=False,
        _metrics=metrics,
        accelerator=types.SimpleNamespace(reduce=lambda x, reduction: x, gather=lambda x: x),
    )
    inputs = dict(
        prompt_ids=torch.zeros(B, 2, dtype=torch.long),
        prompt_mask=torch.ones(B, 2, dtype=torch.long),
        completion_ids=torch.zeros(B, T, dtype=torch.long),
        completion_mask=mask,
        advantages=adv,
        old_per_token_logps=old,
        ref_per_token_logps=ref,
    )
    loss = trl_grpo.GRPOTrainer._compute_loss(stub, None, inputs)
    return loss, {k: v[-1] for k, v in metrics["train"].items()}


@pytest.mark.parametrize(
    "loss_type,level,beta",
    [
        ("bnpo", "token", 0.0),
        ("grpo", "token", 0.04),
        ("dr_grpo", "token", 0.04),
        ("bnpo", "token", 0.04),
        ("grpo", "sequence", 0.0),
    ],
)
def test_loss_gradient_and_clip_fractions_match_trl(loss_type, level, beta):
    # seed 14: tokens clipped low, clipped high, and with ratios in (1 + 0.2, 1 + 0.28] where the
    # asymmetric clip matters
    logp, old, ref, mask, adv = _inputs(14)
    trl_loss, trl_metrics = _trl_loss(logp, old, ref, mask, adv, loss_type=loss_type, level=level, beta=beta)
    (trl_grad,) = torch.autograd.grad(trl_loss, logp)
    opts = PolicyLossOptions(
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
        aggregation=AGGREGATION[loss_type],
        max_length=T,
        ratio="gspo" if level == "sequence" else "token",
        kl_beta=beta,
        kl_estimator="k3",
    )
    ours = policy_loss(logp, old, adv, mask, options=opts, ref_logp=ref)
    (grad,) = torch.autograd.grad(ours.loss, logp)
    assert torch.allclose(ours.loss, trl_loss, atol=1e-6)
    assert torch.allclose(grad, trl_grad, atol=1e-6)
    if level == "token":  # TRL reports sequence-level clip fractions per sequence, not per token
        assert ours.metrics["loss/clip_frac_low"] > 0 and ours.metrics["loss/clip_frac_high"] > 0
        assert abs(float(ours.metrics["loss/clip_frac"]) - trl_metrics["clip_ratio/region_mean"]) < 1e-6
        assert abs(float(ours.metrics["loss/clip_frac_low"]) - trl_metrics["clip_ratio/low_mean"]) < 1e-6
        assert abs(float(ours.metrics["loss/clip_frac_high"]) - trl_metrics["clip_ratio/high_mean"]) < 1e-6
    if beta:
        assert abs(float(ours.metrics["loss/kl"]) - trl_metrics["kl"]) < 1e-6
