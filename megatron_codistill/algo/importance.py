"""Importance weights for training the large model on the small model's rollouts.

Legend: B rows, T tokens. lambda_it = l^{L,old}_it - log mu_it, where mu is the small model that
generated the rollout (scored by the training engine). On o ~ mu, E[lambda] per token ~ -KL(mu || pi_L).
  token_tis  w_it = min(e^lambda_it, C)                        (default, C = 2)
  token_mis  w_it = e^lambda_it if in [lo, C] else 0           (lo = 1/C unless given)
  seq_geo    w_i  = min(exp(mean_t lambda_it), C)              (geometric mean of the token ratios)
  seq_mis    w_i  = prod_t e^lambda_it if in [lo_s, C_s] else 0  (the full sequence ratio, or nothing)
Only seq_mis with C_s = inf is unbiased for the large model's on-policy gradient; the others trade bias
for variance (exact expectations of each are checked by enumeration in tests/algo). Between two
different models the full sequence ratio of a long response is astronomically spread, so a finite
C_s drops most sequences: watch `is/masked_frac`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from megatron_codistill.algo.masked import (
    check_same_shape,
    lengths,
    lookup,
    masked_mean,
    masked_sum,
    zero_outside,
)

Scheme = Callable[[torch.Tensor, torch.Tensor, float, float], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _token_tis(lam, mask, cap, lower):
    w = lam.clamp(max=_log(cap)).exp()
    return w, torch.zeros_like(lam, dtype=torch.bool), lam > _log(cap)


def _token_mis(lam, mask, cap, lower):
    drop = (lam > _log(cap)) | (lam < _log(lower))
    w = torch.where(drop, torch.zeros_like(lam), lam.clamp(max=_log(cap)).exp())
    return w, drop, torch.zeros_like(drop)


def _seq_geo(lam, mask, cap, lower):
    mean = masked_mean(lam, mask, dim=-1)[:, None].expand_as(lam)
    return mean.clamp(max=_log(cap)).exp(), torch.zeros_like(lam, dtype=torch.bool), mean > _log(cap)


def _seq_mis(lam, mask, cap, lower):
    total = masked_sum(lam, mask, dim=-1)[:, None].expand_as(lam)
    drop = (total > _log(cap)) | (total < _log(lower))
    w = torch.where(drop, torch.zeros_like(lam), total.clamp(max=_log(cap)).exp())
    return w, drop, torch.zeros_like(drop)


SCHEMES: dict[str, Scheme] = {
    "token_tis": _token_tis,
    "token_mis": _token_mis,
    "seq_geo": _seq_geo,
    "seq_mis": _seq_mis,
}


class ImportanceWeights(NamedTuple):
    weights: torch.Tensor
    """[B, T] detached weights, 0 outside the mask and on dropped tokens."""
    kept: torch.Tensor
    """[B, T] float mask of the response tokens not dropped by MIS (the loss averages over these)."""
    metrics: dict[str, torch.Tensor]


def _ess(log_w: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(sum W)^2 / (n sum W^2) over the valid rows, from log W (stable for huge spreads); 0 if no W > 0."""
    log_w = torch.where(valid, log_w, -math.inf)
    n = valid.sum().clamp(min=1).to(log_w.dtype)
    s1, s2 = torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0)
    ess = (2 * s1 - s2 - n.log()).exp()
    return torch.where(torch.isfinite(s1), ess, torch.zeros_like(ess))


def importance_weights(
    target_logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    scheme: str = "token_tis",
    cap: float = 2.0,
    seq_cap: float = 2.0,
    lower: float | None = None,
) -> ImportanceWeights:
    """Weights [B, T] (detached, 0 outside `mask` and where masked), the kept-token mask, metrics.

    target_logp: l^{L,old} [B, T]; behaviour_logp: log mu [B, T]; mask [B, T].
    `cap` is C (token_tis, token_mis, seq_geo), `seq_cap` is C_s (seq_mis); MIS keeps [lower, cap] with
    lower = 1 / cap (1 / seq_cap for seq_mis) unless given. Caps may be math.inf.
    Example, token_tis, C = 2: lambda = [log 3, log 0.5] -> w = [2, 0.5], truncated_frac 0.5.

    Metrics (fractions over response tokens): is/log_ratio_mean (token mean of lambda, ~ -KL per token),
    is/log_ratio_seq_mean (mean over responses of sum_t lambda, ~ -KL(mu || pi_L) per response),
    is/weight_mean and is/weight_max over kept tokens, is/truncated_frac, is/masked_frac, is/kept_tokens,
    is/ess (ESS fraction of the applied weights, a token scheme's per-response weight being its
    token mean), is/ess_raw (of the full sequence ratios exp(sum_t lambda)).
    """
    check_same_shape(mask, target_logp=target_logp, behaviour_logp=behaviour_logp)
    fn = lookup(SCHEMES, scheme, "importance weight scheme")
    c = seq_cap if scheme == "seq_mis" else cap
    if not c >= 1:
        raise ValueError(f"importance weight cap ({c}) for {scheme!r} must be >= 1")
    lo = 1.0 / c if lower is None else lower
    if not 0 <= lo <= 1:
        raise ValueError(f"importance weight lower bound ({lo}) must be in [0, 1]")
    with torch.no_grad():
        dtype = torch.promote_types(target_logp.dtype, torch.float32)  # bf16 log-probs: ratios in fp32
        lam = zero_outside(target_logp.to(dtype) - behaviour_logp.to(dtype), mask)
        w, dropped, truncated = fn(lam, mask, c, lo)
        on = mask > 0
        w = torch.where(on, w, 0.0)
        kept = on & ~dropped
        n = lengths(mask)
        valid = n > 0
        seq_w = masked_mean(w, mask, dim=-1)
        frac = lambda b: masked_mean((b & on).to(mask.dtype), mask)  # noqa: E731
        metrics = {
            "is/log_ratio_mean": masked_mean(lam, mask),
            "is/log_ratio_seq_mean": masked_sum(lam, mask, dim=-1).sum() / valid.sum().clamp(min=1),
            "is/weight_mean": masked_mean(w, kept.to(mask.dtype)),
            "is/weight_max": w.max() if w.numel() else w.new_zeros(()),
            "is/truncated_frac": frac(truncated),
            "is/masked_frac": frac(dropped),
            "is/kept_tokens": kept.sum().to(mask.dtype),
            "is/ess": _ess(torch.log(seq_w), valid),
            "is/ess_raw": _ess(masked_sum(lam, mask, dim=-1), valid),
        }
    return ImportanceWeights(w.to(target_logp.dtype), kept.to(mask.dtype), metrics)
