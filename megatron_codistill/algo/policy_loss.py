"""The clipped policy-gradient surrogate shared by every GRPO variant, with its options and metrics.

Legend: B rows, T tokens. logp = l^theta (differentiable), old_logp = l^old (the weights that scored
the batch), both [B, T]; advantages [B] (one per sequence) or [B, T] (per token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_codistill.algo.aggregation import AGGREGATIONS, Count, aggregate
from megatron_codistill.algo.kl import KL_ESTIMATORS, kl_penalty
from megatron_codistill.algo.masked import check_same_shape, lengths, lookup, masked_mean, zero_outside
from megatron_codistill.algo.types import LossOutput

# Log-ratios are clamped to +-20 before exp (ratio e^20 ~ 5e8): beyond that the clip has long since
# zeroed the gradient, and an unclamped exp would turn a garbage log-prob into inf and then NaN.
_MAX_LOG_RATIO = 20.0


def token_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log rho_it = l^theta_it - l^old_it (PPO / GRPO)."""
    return zero_outside(logp - old_logp.detach(), mask)


def gspo_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO: log s_i = mean_t (l^theta - l^old), the same for every token of sequence i."""
    per_seq = masked_mean(token_log_ratio(logp, old_logp, mask), mask, dim=-1)
    return per_seq[:, None].expand_as(logp) * (mask > 0)


def gspo_token_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO-token: s_it = sg(s_i) * pi(o_it) / sg(pi(o_it)): value s_i, gradient through token t alone."""
    value = gspo_log_ratio(logp, old_logp, mask).detach()
    return value + zero_outside(logp - logp.detach(), mask)


RATIOS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "token": token_log_ratio,
    "gspo": gspo_log_ratio,
    "gspo_token": gspo_token_log_ratio,
}


@dataclass(frozen=True)
class PolicyLossOptions:
    """Options of the clipped surrogate; defaults follow DESIGN §2."""

    eps_low: float = 0.2
    """Lower clip: the ratio is clipped below at 1 - eps_low."""
    eps_high: float = 0.2
    """Upper clip: the ratio is clipped above at 1 + eps_high (DAPO clip-higher: 0.28; GSPO: ~4e-4)."""
    dual_clip: float | None = None
    """Dual clip c > 1: for A < 0 the objective is at least c * A; None disables it."""
    ratio: str = "token"
    """Importance ratio: one of RATIOS ("token", "gspo", "gspo_token")."""
    aggregation: str = "token_mean"
    """One of AGGREGATIONS ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")."""
    max_length: int | None = None
    """L_max for "seq_mean_token_sum_norm": the generation budget in tokens."""
    kl_beta: float = 0.0
    """Weight of the KL to the reference; 0 disables it (then no ref_logp is needed)."""
    kl_estimator: str = "k3"
    """One of KL_ESTIMATORS ("k1", "k2", "k3")."""

    def __post_init__(self) -> None:
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError(f"eps_low ({self.eps_low}) and eps_high ({self.eps_high}) must be >= 0")
        if self.eps_low >= 1:
            raise ValueError(f"eps_low ({self.eps_low}) must be < 1: the lower clip 1 - eps_low must be > 0")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"dual_clip ({self.dual_clip}) must be > 1, or None to disable it")
        if self.kl_beta < 0:
            raise ValueError(f"kl_beta ({self.kl_beta}) must be >= 0")
        lookup(RATIOS, self.ratio, "ratio")
        lookup(AGGREGATIONS, self.aggregation, "aggregation")
        lookup(KL_ESTIMATORS, self.kl_estimator, "kl_estimator")
        if self.aggregation == "seq_mean_token_sum_norm" and (self.max_length is None or self.max_length < 1):
            raise ValueError(
                f"aggregation 'seq_mean_token_sum_norm' needs max_length >= 1, got {self.max_length}"
            )


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    options: PolicyLossOptions | None = None,
    weights: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    denominator: Count = None,
) -> LossOutput:
    """-aggregate(sg(w) * min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)) + beta * aggregate(KL).

    logp, old_logp, mask: [B, T]; advantages: [B] or [B, T] (detached here); weights: optional [B, T]
    importance weights (detached), multiplying each token's surrogate; ref_logp: [B, T], needed when
    kl_beta > 0; entropy: optional [B, T] token entropies, logged as `policy/entropy`.
    With dual clip c, tokens with A < 0 use max(min(...), c * A). `options` defaults to
    PolicyLossOptions(); `denominator` is the aggregation's global count (see `aggregation`).

    Metrics: loss/policy, loss/kl (token mean of the estimator, when a reference is given),
    loss/clip_frac (tokens whose gradient the clip removed), loss/clip_frac_low, loss/clip_frac_high,
    loss/dual_clip_frac, loss/ratio_mean, loss/approx_kl (k3 of old vs current, a step-size gauge),
    loss/num_tokens, policy/entropy.

    Departures from the papers: log-ratios are clamped to +-20 before exp (see _MAX_LOG_RATIO);
    ratios are computed in at least fp32 whatever the log-prob dtype; the KL term is not
    importance-weighted; GSPO's sequence ratio is clipped token by token, which equals clipping the
    sequence when the advantage is per sequence.
    """
    check_same_shape(mask, logp=logp, old_logp=old_logp, weights=weights, ref_logp=ref_logp, entropy=entropy)
    if advantages.dim() == 1:
        if advantages.shape[0] != mask.shape[0]:
            raise ValueError(f"advantages has {advantages.shape[0]} rows but mask has {mask.shape[0]}")
        advantages = advantages[:, None]
    elif advantages.shape != mask.shape:
        raise ValueError(
            f"advantages must be [B] or [B, T]={tuple(mask.shape)}, got {tuple(advantages.shape)}"
        )
    options = options or PolicyLossOptions()
    if options.kl_beta > 0 and ref_logp is None:
        raise ValueError(f"kl_beta ({options.kl_beta}) > 0 needs ref_logp")
    dtype = torch.promote_types(logp.dtype, torch.float32)  # bf16 ratios would be off by ~1%
    adv = zero_outside(advantages.detach().expand_as(mask), mask).to(dtype)
    log_ratio = lookup(RATIOS, options.ratio, "ratio")(logp.to(dtype), old_logp.to(dtype), mask)
    ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO).exp()
    clipped = ratio.clamp(1 - options.eps_low, 1 + options.eps_high)
    objective = torch.minimum(ratio * adv, clipped * adv)
    dual = torch.zeros_like(mask, dtype=torch.bool)
    if options.dual_clip is not None:
        dual = (adv < 0) & (ratio > options.dual_clip)
        objective = torch.where(adv < 0, torch.maximum(objective, options.dual_clip * adv), objective)
    if weights is not None:
        objective = objective * zero_outside(weights.detach(), mask)
    agg = dict(aggregation=options.aggregation, max_length=options.max_length, denominator=denominator)
    pg = -aggregate(objective, mask, **agg)
    loss = pg
    with torch.no_grad():
        low = (adv < 0) & (ratio < 1 - options.eps_low)
        high = (adv > 0) & (ratio > 1 + options.eps_high)
        frac = lambda b: masked_mean(b.to(mask.dtype), mask)  # noqa: E731
        metrics = {
            "loss/clip_frac": frac(low | high),
            "loss/clip_frac_low": frac(low),
            "loss/clip_frac_high": frac(high),
            "loss/dual_clip_frac": frac(dual),
            "loss/ratio_mean": masked_mean(ratio, mask),
            "loss/approx_kl": masked_mean(torch.expm1(-log_ratio.clamp(-20, 20)) + log_ratio, mask),
            "loss/num_tokens": lengths(mask).sum(),
        }
    if ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, mask, options.kl_estimator)
        metrics["loss/kl"] = masked_mean(kl.detach(), mask)
        if options.kl_beta > 0:
            loss = loss + options.kl_beta * aggregate(kl, mask, **agg)
    if entropy is not None:
        metrics["policy/entropy"] = masked_mean(entropy.detach(), mask)
    metrics["loss/policy"] = pg.detach()
    metrics["loss/total"] = loss.detach()
    return LossOutput(loss=loss, metrics=metrics)
