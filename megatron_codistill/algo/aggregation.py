"""How per-token losses [B, T] become one scalar: the three aggregations, chosen by name.

Legend: B rows (= prompts x G), T tokens, L_max the generation budget (max new tokens).
  token_mean               sum_it x m / sum_it m                 (DAPO; every token weighs the same)
  seq_mean_token_mean      mean_i (sum_t x m / |o_i|)            (DeepSeekMath GRPO; short answers weigh more)
  seq_mean_token_sum_norm  sum_it x m / (B * L_max)              (Dr.GRPO: a constant, no length bias)

`denominator`, when given, replaces the count in the normaliser (tokens for token_mean, sequences
otherwise) so that micro-batches and data-parallel ranks each contribute their share of one global
mean: pass the global count and sum the micro-batch losses (gradient accumulation stays exact).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from megatron_codistill.algo.masked import lengths, lookup, masked_sum

Count = float | torch.Tensor | None


def token_mean(
    x: torch.Tensor, mask: torch.Tensor, *, max_length: int | None, denominator: Count
) -> torch.Tensor:
    count = mask.sum().clamp(min=1) if denominator is None else denominator
    return masked_sum(x, mask) / count


def seq_mean_token_mean(
    x: torch.Tensor, mask: torch.Tensor, *, max_length: int | None, denominator: Count
) -> torch.Tensor:
    """Rows without a response token contribute 0 and are not counted (they were dropped, not short)."""
    n = lengths(mask)
    per_seq = masked_sum(x, mask, dim=-1) / n.clamp(min=1)
    count = (n > 0).sum().clamp(min=1) if denominator is None else denominator
    return per_seq.sum() / count


def seq_mean_token_sum_norm(
    x: torch.Tensor, mask: torch.Tensor, *, max_length: int | None, denominator: Count
) -> torch.Tensor:
    """Every row counts, empty or not: the normaliser must not depend on the sampled lengths."""
    if max_length is None or max_length < 1:
        raise ValueError(
            f"aggregation 'seq_mean_token_sum_norm' needs max_length >= 1 (the generation budget "
            f"L_max), got {max_length}"
        )
    rows = mask.shape[0] if denominator is None else denominator
    return masked_sum(x, mask) / (rows * max_length)


AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "token_mean": token_mean,
    "seq_mean_token_mean": seq_mean_token_mean,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm,
}


def aggregate(
    x: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str = "token_mean",
    *,
    max_length: int | None = None,
    denominator: Count = None,
) -> torch.Tensor:
    """Reduce per-token values x [B, T] over mask [B, T] to a 0-dim tensor by the named aggregation."""
    fn = lookup(AGGREGATIONS, aggregation, "aggregation")
    return fn(x, mask, max_length=max_length, denominator=denominator)
