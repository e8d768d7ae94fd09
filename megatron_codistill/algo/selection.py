"""Which rollouts to train on: PODS max-variance down-sampling and DAPO dynamic sampling.

Legend: B prompts, N rollouts drawn per prompt, G rollouts kept, prompt-major rows.
"""

from __future__ import annotations

import torch

from megatron_codistill.algo.masked import check_groups


def max_variance_subset(rewards: torch.Tensor, group_size: int, keep: int) -> torch.Tensor:
    """PODS: per prompt, the `keep` of `group_size` (= N) rollouts whose rewards have the largest variance.

    rewards: [B*N] float, prompt-major. Returns [B*keep] int64 row indices into the B*N rows,
    prompt-major and ascending within each prompt, so `x[idx]` is again a grouped batch with G = keep.

    A max-variance subset of size m is always the k largest plus the m - k smallest rewards for some k
    (moving any kept value towards the middle lowers the spread), so one sort and prefix sums of r and r^2
    score all m + 1 candidates: O(N log N) per prompt, vectorised over prompts.
    Ties (equal variances) go to the candidate with fewer large rewards.

    Example, N = 6, keep 4, rewards [0.1, 0.9, 0.5, 0.0, 1.0, 0.4] -> rows [0, 1, 3, 4]
    (two smallest {0.0, 0.1} and two largest {0.9, 1.0}).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [B*N], got shape {tuple(rewards.shape)}")
    n_groups = check_groups(rewards.numel(), group_size)
    if not 1 <= keep <= group_size:
        raise ValueError(f"keep ({keep}) must be in [1, group_size={group_size}]")
    n, m = group_size, keep
    r = rewards.view(n_groups, n).to(torch.float64)
    sorted_r, order = torch.sort(r, dim=1, stable=True)
    zero = torch.zeros(n_groups, 1, dtype=r.dtype, device=r.device)
    c1 = torch.cat([zero, sorted_r.cumsum(1)], dim=1)  # c1[:, j] = sum of the j smallest
    c2 = torch.cat([zero, sorted_r.pow(2).cumsum(1)], dim=1)
    k = torch.arange(m + 1, device=r.device)  # candidate: k largest + (m - k) smallest
    s1 = c1[:, m - k] + c1[:, n : n + 1] - c1[:, n - k]
    s2 = c2[:, m - k] + c2[:, n : n + 1] - c2[:, n - k]
    variance = s2 / m - (s1 / m).pow(2)  # [B, m + 1]
    best = variance.argmax(dim=1, keepdim=True)  # first maximum: fewest large rewards
    j = torch.arange(m, device=r.device)[None, :]
    # positions in sorted order: j for the m - k smallest, then the top k at n - m + j
    pos = torch.where(j < m - best, j, n - m + j)
    chosen = torch.gather(order, 1, pos).sort(dim=1).values
    offsets = torch.arange(n_groups, device=r.device)[:, None] * n
    return (chosen + offsets).reshape(-1)


def nonconstant_groups(rewards: torch.Tensor, group_size: int, *, atol: float = 0.0) -> torch.Tensor:
    """DAPO dynamic sampling: True for the groups whose rewards are not all equal.

    rewards: [B*G]. Returns [B] bool; a group is kept when max - min > atol. A group with all-equal
    rewards has zero whitened advantage and contributes no policy gradient. Row mask:
    `keep.repeat_interleave(group_size)`. G = 1 keeps nothing.
    Example, G = 2, rewards [1, 1, 0, 1, 0, 0] -> [False, True, False].

    Departure from DAPO: DAPO keeps sampling until the batch is full of such groups; here the caller
    decides whether to resample or to train on the smaller batch.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [B*G], got shape {tuple(rewards.shape)}")
    n_groups = check_groups(rewards.numel(), group_size)
    r = rewards.view(n_groups, group_size)
    return (r.max(dim=1).values - r.min(dim=1).values) > atol
