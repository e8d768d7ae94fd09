"""Moving rollouts between ranks (DESIGN §4).

Rollouts are token ids, small next to the models: every rank generates for its own prompts, the
batch is gathered to every rank, each model's data-parallel replica works on its slice of the global
batch, and per-row results (log-probs) are gathered back. Row order is global prompt-major order:
rank r's rows come before rank r+1's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_codistill.rollout.base import RolloutBatch


def all_gather_rows(x: torch.Tensor, group=None, pad_value: float = 0) -> torch.Tensor:
    """Concatenate `x` ([n_r, T_r, ...]; n_r and T_r may differ per rank) over `group` along dim 0.

    Dim 1 (if any) is right-padded with `pad_value` to the largest T of the group.
    """
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return x
    world = dist.get_world_size(group)
    shape = torch.tensor([x.shape[0], x.shape[1] if x.dim() > 1 else 0], dtype=torch.long)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    n_max = int(max(s[0] for s in shapes))
    t_max = int(max(s[1] for s in shapes))
    padded = x
    if x.dim() > 1 and x.shape[1] < t_max:
        padded = F.pad(x, (0, 0) * (x.dim() - 2) + (0, t_max - x.shape[1]), value=pad_value)
    if x.shape[0] < n_max:
        fill = torch.full((n_max - x.shape[0], *padded.shape[1:]), pad_value, dtype=x.dtype)
        padded = torch.cat([padded, fill])
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[: int(s[0])] for p, s in zip(parts, shapes)])


def gather_batch(local: RolloutBatch, pad_id: int, group=None) -> RolloutBatch:
    """The global batch on every rank of `group` from each rank's local batch."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return local
    reasons: list[list[str]] = [None] * dist.get_world_size(group)  # type: ignore[list-item]
    dist.all_gather_object(reasons, local.finish_reasons, group=group)
    return RolloutBatch(
        tokens=all_gather_rows(local.tokens, group, pad_value=pad_id),
        response_mask=all_gather_rows(local.response_mask, group),
        behaviour_logprobs=all_gather_rows(local.behaviour_logprobs, group),
        prompt_lengths=all_gather_rows(local.prompt_lengths, group),
        response_lengths=all_gather_rows(local.response_lengths, group),
        group_size=local.group_size,
        finish_reasons=[r for rs in reasons for r in rs],
        weight_versions=all_gather_rows(local.weight_versions, group),
    )


def row_slice(n_rows: int, group_size: int, part: int, parts: int) -> slice:
    """Rows of data-parallel replica `part` of `parts` (whole groups of `group_size` rows each)."""
    groups = n_rows // group_size
    if groups % parts:
        raise ValueError(f"{groups} groups cannot be split evenly over {parts} data-parallel replicas")
    per = groups // parts * group_size
    return slice(part * per, (part + 1) * per)


def take_rows(batch: RolloutBatch, rows: slice) -> RolloutBatch:
    """The sub-batch of `rows` (a slice of whole groups), trimmed to its longest sequence."""
    lengths = batch.prompt_lengths[rows] + batch.response_lengths[rows]
    T = int(lengths.max()) if lengths.numel() else 1
    return RolloutBatch(
        tokens=batch.tokens[rows, :T],
        response_mask=batch.response_mask[rows, : max(T - 1, 1)],
        behaviour_logprobs=batch.behaviour_logprobs[rows, : max(T - 1, 1)],
        prompt_lengths=batch.prompt_lengths[rows],
        response_lengths=batch.response_lengths[rows],
        group_size=batch.group_size,
        finish_reasons=batch.finish_reasons[rows],
        weight_versions=batch.weight_versions[rows],
    )
