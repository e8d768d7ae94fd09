"""Where the algorithm config meets the pure objectives of `algo`: per-micro-batch loss closures.

Each `*_loss_fn` returns `loss_fn(logprobs [b, T-1], entropy, rows) -> (loss, metrics)` for
`Policy.update` (see parallel.train_step). Micro-batches hold whole groups, so whitening inside
the closure sees every rollout of its prompts; `denominator` is the global count of the chosen
aggregation divided by the data-parallel size, so that summed micro-batch losses, averaged by DDP
over replicas, equal the loss of the global batch exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_codistill import algo
from megatron_codistill.config import AlgorithmConfig


def policy_options(a: AlgorithmConfig, max_new_tokens: int, *, use_kl: bool) -> algo.PolicyLossOptions:
    return algo.PolicyLossOptions(
        eps_low=a.clip_eps_low, eps_high=a.clip_eps_high, dual_clip=a.dual_clip, ratio=a.ratio,
        aggregation=a.loss_agg, max_length=max_new_tokens, kl_beta=a.kl_beta if use_kl else 0.0,
        kl_estimator=a.kl_estimator,
    )


def global_denominator(mask: torch.Tensor, aggregation: str, dp_group, dp: int) -> torch.Tensor:
    """The aggregation's count over the whole batch (all DP replicas), divided by dp."""
    if aggregation == "token_mean":
        count = mask.sum()
    elif aggregation == "seq_mean_token_mean":
        count = (mask.sum(-1) > 0).sum().to(mask.dtype)
    else:  # seq_mean_token_sum_norm counts every row
        count = torch.tensor(float(mask.shape[0]))
    count = count.detach().clone().float()
    if dp > 1:
        dist.all_reduce(count, group=dp_group)
    return count.clamp(min=1.0) / dp


@dataclass
class Scored:
    """What one model's loss needs about its slice of the batch; all [n, T-1] or [n]."""

    mask: torch.Tensor
    old_logp: torch.Tensor
    task_rewards: torch.Tensor
    teacher_logp: torch.Tensor | None = None
    behaviour_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None


def small_loss_fn(a: AlgorithmConfig, s: Scored, opts: algo.PolicyLossOptions, denominator,
                  *, task_weight: float = 1.0, kd_alpha: float | None = None):
    """CoDistill / KD-GRPO / OPD on the small model (kd_alpha 0 with no teacher = plain GRPO)."""
    alpha = a.kd_alpha if kd_alpha is None else kd_alpha

    def loss_fn(logp, entropy, rows):
        teacher = s.teacher_logp[rows] if s.teacher_logp is not None else s.old_logp[rows]
        out = algo.small_model_loss(
            logp, s.old_logp[rows], teacher, task_weight * s.task_rewards[rows], s.mask[rows],
            group_size=a.group_size, alpha=alpha, kappa=a.kd_kappa, kd_reduction=a.kd_reduction,
            token_alpha=a.kd_token_alpha if s.teacher_logp is not None else 0.0,
            scale_by_std=a.advantage_std, options=opts,
            ref_logp=None if s.ref_logp is None else s.ref_logp[rows], entropy=entropy,
            denominator=denominator,
        )
        return out.loss, out.metrics

    return loss_fn


def large_loss_fn(a: AlgorithmConfig, s: Scored, opts: algo.PolicyLossOptions, denominator):
    """The large model on the small model's rollouts, weighted by importance weights."""

    def loss_fn(logp, entropy, rows):
        out = algo.large_model_loss(
            logp, s.old_logp[rows], s.behaviour_logp[rows], s.task_rewards[rows], s.mask[rows],
            group_size=a.group_size, scheme=a.is_weight, cap=a.is_cap, seq_cap=a.is_seq_cap,
            scale_by_std=a.advantage_std, options=opts,
            ref_logp=None if s.ref_logp is None else s.ref_logp[rows], entropy=entropy,
            denominator=denominator,
        )
        return out.loss, out.metrics

    return loss_fn


def grpo_loss_fn(a: AlgorithmConfig, s: Scored, opts: algo.PolicyLossOptions, denominator):
    """Plain GRPO of a model on its own rollouts."""

    def loss_fn(logp, entropy, rows):
        out = algo.grpo_loss(
            logp, s.old_logp[rows], s.task_rewards[rows], s.mask[rows], group_size=a.group_size,
            scale_by_std=a.advantage_std, options=opts,
            ref_logp=None if s.ref_logp is None else s.ref_logp[rows], entropy=entropy,
            denominator=denominator,
        )
        return out.loss, out.metrics

    return loss_fn


def sft_loss_fn(mask: torch.Tensor, denominator):
    """Token-mean negative log-likelihood of the response tokens."""

    def loss_fn(logp, entropy, rows):
        out = algo.sft_loss(logp, mask[rows], denominator=denominator)
        return out.loss, out.metrics

    return loss_fn


def large_kept_mask(a: AlgorithmConfig, old_logp, behaviour_logp, mask) -> torch.Tensor:
    """Tokens the large model's loss keeps (MIS schemes drop some): for its denominator."""
    return algo.importance_weights(old_logp, behaviour_logp, mask, scheme=a.is_weight, cap=a.is_cap,
                                   seq_cap=a.is_seq_cap).kept
