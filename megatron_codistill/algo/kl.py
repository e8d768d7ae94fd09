"""KL-to-reference estimators (Schulman's k1, k2, k3) and token entropy.

Legend: B rows, T tokens, V vocab. With delta = l^ref - l^theta on tokens sampled from pi_theta:
  k1 = -delta               unbiased value of KL(theta || ref), can be negative;
  k2 = delta^2 / 2          biased value, low variance;
  k3 = e^delta - delta - 1  unbiased value and >= 0 (the GRPO paper's choice).
Used as a loss term with the samples held fixed, their expected gradients differ: k1 gives 0,
k2 gives grad KL(theta || ref), k3 gives grad KL(ref || theta) (tested by enumeration).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from megatron_codistill.algo.masked import check_same_shape, lookup, zero_outside

# |delta| is clamped before exp so that a garbage reference log-prob cannot produce inf; a token whose
# probability ratio to the reference exceeds e^20 is already a diverged run.
_MAX_DELTA = 20.0

KL_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "k1": lambda delta: -delta,
    "k2": lambda delta: 0.5 * delta.pow(2),
    "k3": lambda delta: torch.expm1(delta.clamp(-_MAX_DELTA, _MAX_DELTA)) - delta,
}


def kl_penalty(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, estimator: str = "k3"
) -> torch.Tensor:
    """Per-token KL estimate [B, T] between the policy (logp, differentiable) and a frozen reference.

    logp, ref_logp, mask: [B, T]. Returns [B, T] in at least fp32, 0 outside `mask`.
    Example: logp = log 0.5, ref_logp = log 0.25 -> delta = -log 2:
    k1 = 0.693, k2 = 0.240, k3 = 0.5 + 0.693 - 1 = 0.193.
    """
    check_same_shape(mask, logp=logp, ref_logp=ref_logp)
    fn = lookup(KL_ESTIMATORS, estimator, "kl_estimator")
    dtype = torch.promote_types(logp.dtype, torch.float32)
    delta = zero_outside(ref_logp.detach().to(dtype) - logp.to(dtype), mask)
    return fn(delta) * (mask > 0)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) in nats. logits: [B, T, V] -> [B, T]. A metric: call it under no_grad."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
