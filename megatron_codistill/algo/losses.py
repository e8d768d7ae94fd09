"""The objectives the trainer calls: GRPO baselines, CoDistill's small and large model losses, SFT.

Legend: B prompts, G rollouts per prompt (rows prompt-major: b*G + g), T tokens. Every log-prob
tensor is [B*G, T] aligned with `mask` [B*G, T] (1 on response tokens); rewards are [B*G].
Whitening needs whole groups: a micro-batch must hold all G rollouts of its prompts, and
`denominator` (see `aggregation`) makes the micro-batch losses add up to the full-batch loss.

Each loss is `policy_loss` on inputs that do not depend on the weights being trained (advantages,
the kept-token mask, importance weights). `*_advantages` compute those once over whole groups, so a
trainer may then cut the rows into micro-batches of any composition: `policy_loss` on each
micro-batch's rows, with the global `denominator`, sums to the same loss.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from megatron_codistill.algo.advantages import group_whiten
from megatron_codistill.algo.aggregation import Count, aggregate
from megatron_codistill.algo.importance import importance_weights
from megatron_codistill.algo.kd import kd_log_ratio, kd_reward, sequence_kd, token_kd_advantages
from megatron_codistill.algo.masked import check_groups, lengths, masked_mean
from megatron_codistill.algo.policy_loss import PolicyLossOptions, policy_loss
from megatron_codistill.algo.selection import nonconstant_groups
from megatron_codistill.algo.types import LossOutput


def _check_rewards(rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> None:
    if rewards.shape != (mask.shape[0],):
        raise ValueError(f"rewards must be [B*G]={mask.shape[0]}, got shape {tuple(rewards.shape)}")
    check_groups(mask.shape[0], group_size)


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a [N] tensor in at least fp32; 0 when empty."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return x.sum() / max(x.numel(), 1)


def _advantage_metrics(
    rewards: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, group_size: int
) -> dict[str, torch.Tensor]:
    """reward/mean, adv/abs_mean (over response tokens), adv/constant_group_frac (groups with no signal)."""
    with torch.no_grad():
        adv_t = adv[:, None].expand_as(mask) if adv.dim() == 1 else adv
        constant = ~nonconstant_groups(rewards, group_size)
        return {
            "reward/mean": _mean(rewards),
            "adv/abs_mean": masked_mean(adv_t.abs(), mask),
            "adv/constant_group_frac": _mean(constant.float()),
        }


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    group_size: int,
    scale_by_std: bool = True,
    options: PolicyLossOptions | None = None,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    denominator: Count = None,
) -> LossOutput:
    """Plain GRPO (or Dr.GRPO with scale_by_std=False and seq_mean_token_sum_norm) of a model on its own
    rollouts: A = group_whiten(rewards), then `policy_loss`. rewards: [B*G]; tensors [B*G, T]."""
    inputs = grpo_advantages(rewards, mask, group_size=group_size, scale_by_std=scale_by_std)
    return _surrogate(logp, old_logp, inputs, options, ref_logp, entropy, denominator)


class SurrogateInputs(NamedTuple):
    """What `policy_loss` needs besides the log-probs, fixed for the whole update (all rows [B*G])."""

    advantages: torch.Tensor
    """[B*G] per sequence or [B*G, T] per token."""
    mask: torch.Tensor
    """[B*G, T] tokens the loss averages over (the response mask, minus what MIS drops)."""
    weights: torch.Tensor | None
    """[B*G, T] detached importance weights, or None."""
    metrics: dict[str, torch.Tensor]
    """Metrics of the batch that need no current log-probs (rewards, advantages, KD, weights)."""


def _surrogate(logp, old_logp, inputs: SurrogateInputs, options, ref_logp, entropy, denominator) -> LossOutput:
    out = policy_loss(
        logp,
        old_logp,
        inputs.advantages,
        inputs.mask,
        options=options,
        weights=inputs.weights,
        ref_logp=ref_logp,
        entropy=entropy,
        denominator=denominator,
    )
    out.metrics.update(inputs.metrics)
    return out


def grpo_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, *, group_size: int, scale_by_std: bool = True
) -> SurrogateInputs:
    """The inputs of `grpo_loss`: A = group_whiten(rewards) [B*G]; metrics reward/mean, adv/*."""
    _check_rewards(rewards, mask, group_size)
    adv = group_whiten(rewards, group_size, scale_by_std=scale_by_std)
    return SurrogateInputs(adv, mask, None, _advantage_metrics(rewards, adv, mask, group_size))


def small_model_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    task_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    group_size: int,
    alpha: float = 0.5,
    kappa: float = 10.0,
    kd_reduction: str = "mean",
    token_alpha: float = 0.0,
    scale_by_std: bool = True,
    options: PolicyLossOptions | None = None,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    denominator: Count = None,
) -> LossOutput:
    """CoDistill's small model: GRPO on the task reward shaped by the large model's KD reward.

    logp: l^S [B*G, T] (differentiable); old_logp: l^{S,old}; teacher_logp: l^{L,old} on the same
    tokens (for the reference-conditioned reward, `kd.align_responses` of the teacher's scores);
    task_rewards: [B*G]; mask: [B*G, T].
      d = l^{L,old} - l^{S,old};  KD_i = mean_t d (or sum);  r~ = R + alpha * clip(KD, -kappa, kappa)
      A_i = whiten_g(r~);  A_it = A_i + token_alpha * clip(d_it, -kappa, kappa)  (token_alpha 0: off)
      loss = policy_loss(l^S, l^{S,old}, A)
    alpha = 0 and token_alpha = 0 is plain GRPO; task_rewards = 0 is pure on-policy distillation.
    Departure: kappa also bounds d_it in the token-level term (the paper states it for KD_i only).
    Metrics: those of `policy_loss`, kd/reward_mean (mean KD_i), kd/token_mean, kd/clip_frac
    (responses with |KD_i| > kappa), reward/task_mean, reward/mean (of r~), adv/* (of r~),
    adv/task_constant_group_frac (groups with equal task rewards).
    """
    inputs = small_model_advantages(
        old_logp,
        teacher_logp,
        task_rewards,
        mask,
        group_size=group_size,
        alpha=alpha,
        kappa=kappa,
        kd_reduction=kd_reduction,
        token_alpha=token_alpha,
        scale_by_std=scale_by_std,
    )
    return _surrogate(logp, old_logp, inputs, options, ref_logp, entropy, denominator)


def small_model_advantages(
    old_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    task_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    group_size: int,
    alpha: float = 0.5,
    kappa: float = 10.0,
    kd_reduction: str = "mean",
    token_alpha: float = 0.0,
    scale_by_std: bool = True,
) -> SurrogateInputs:
    """The inputs of `small_model_loss` (its formulas): A [B*G], or [B*G, T] with token_alpha, and the
    kd/*, reward/*, adv/* metrics."""
    _check_rewards(task_rewards, mask, group_size)
    d = kd_log_ratio(teacher_logp, old_logp, mask)
    kd = sequence_kd(d, mask, kd_reduction)
    shaped = kd_reward(task_rewards, kd, alpha=alpha, kappa=kappa)
    adv = group_whiten(shaped, group_size, scale_by_std=scale_by_std)
    if token_alpha:
        adv = token_kd_advantages(adv, d, mask, alpha=token_alpha, kappa=kappa)
    with torch.no_grad():
        has = (lengths(mask) > 0).to(mask.dtype)
        metrics = _advantage_metrics(shaped, adv, mask, group_size)
        metrics.update(
            {
                "kd/reward_mean": masked_mean(kd, has),
                "kd/token_mean": masked_mean(d, mask),
                "kd/clip_frac": masked_mean((kd.abs() > kappa).to(mask.dtype), has),
                "reward/task_mean": _mean(task_rewards),
                # groups whose only learning signal is the KD term
                "adv/task_constant_group_frac": _mean(
                    (~nonconstant_groups(task_rewards, group_size)).float()
                ),
            }
        )
    return SurrogateInputs(adv, mask, None, metrics)


def large_model_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    task_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    group_size: int,
    scheme: str = "token_tis",
    cap: float = 2.0,
    seq_cap: float = 2.0,
    lower: float | None = None,
    scale_by_std: bool = True,
    options: PolicyLossOptions | None = None,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    denominator: Count = None,
) -> LossOutput:
    """CoDistill's large model, trained on the small model's rollouts through importance weights.

    logp: l^L [B*G, T] (differentiable); old_logp: l^{L,old}; behaviour_logp: log mu, the small
    model's log-probs of its own samples (l^{S,old} from the training engine); task_rewards: [B*G].
      A_i = whiten_g(R);  w = importance_weights(l^{L,old}, log mu; scheme, C, C_s)
      loss = -mean over kept tokens of sg(w) * min(rho A, clip(rho) A),  rho = pi_L / pi_L^old
    (`options.aggregation` chooses the mean; "kept" excludes what MIS drops.) With `denominator`,
    pass the global count of kept tokens (`importance_weights(...).kept.sum()`).
    Metrics: those of `policy_loss` and `importance_weights` (is/*), reward/mean, adv/*.
    """
    inputs = large_model_advantages(
        old_logp,
        behaviour_logp,
        task_rewards,
        mask,
        group_size=group_size,
        scheme=scheme,
        cap=cap,
        seq_cap=seq_cap,
        lower=lower,
        scale_by_std=scale_by_std,
    )
    return _surrogate(logp, old_logp, inputs, options, ref_logp, entropy, denominator)


def large_model_advantages(
    old_logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    task_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    group_size: int,
    scheme: str = "token_tis",
    cap: float = 2.0,
    seq_cap: float = 2.0,
    lower: float | None = None,
    scale_by_std: bool = True,
) -> SurrogateInputs:
    """The inputs of `large_model_loss`: A [B*G], the kept-token mask and the importance weights, with
    the is/*, reward/mean and adv/* metrics."""
    _check_rewards(task_rewards, mask, group_size)
    iw = importance_weights(
        old_logp, behaviour_logp, mask, scheme=scheme, cap=cap, seq_cap=seq_cap, lower=lower
    )
    adv = group_whiten(task_rewards, group_size, scale_by_std=scale_by_std)
    metrics = dict(iw.metrics)
    metrics.update(_advantage_metrics(task_rewards, adv, mask, group_size))
    return SurrogateInputs(adv, iw.kept, iw.weights, metrics)


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, *, denominator: Count = None) -> LossOutput:
    """Negative log-likelihood per response token (chain-of-thought distillation warm start).

    logp: [B, T] log-probs of the target tokens (differentiable); mask: [B, T]. loss/nll in nats/token.
    """
    loss = -aggregate(logp, mask, "token_mean", denominator=denominator)
    return LossOutput(loss=loss, metrics={"loss/nll": loss.detach(), "loss/num_tokens": mask.sum().detach()})
