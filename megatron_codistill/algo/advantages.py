"""Group-relative advantages: GRPO whitening, Dr.GRPO centring, process supervision, DAPO length penalty.

Legend: B prompts, G rollouts per prompt, T tokens. Rows are prompt-major: row b*G + g is rollout g
of prompt b, so a group is G contiguous rows.
"""

from __future__ import annotations

import torch

from megatron_codistill.algo.masked import check_groups, check_same_shape, zero_outside


def group_whiten(
    rewards: torch.Tensor, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """A_i = (R_i - mean_g R) / (std_g R + eps), or R_i - mean_g R when `scale_by_std` is False (Dr.GRPO).

    rewards: [B*G] float, prompt-major. Returns [B*G], same dtype.

    Worked example, G = 4, rewards [1, 0, 0, 1,  2, 2, 2, 2]:
      group 0: mean 0.5, std sqrt((4 * 0.25) / 3) = 0.5774 -> A = [0.866, -0.866, -0.866, 0.866];
      group 1: all equal -> A = [0, 0, 0, 0] (no NaN: 0 / (0 + eps));
      Dr.GRPO (scale_by_std=False): group 0 -> [0.5, -0.5, -0.5, 0.5].
    A single-rollout group (G = 1) gets A = 0.

    Departures from the papers: the std is the sample std (Bessel, divisor G - 1, as the DeepSeekMath
    and TRL/verl implementations do), and eps = 1e-6 is added to the std rather than to the variance.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [B*G], got shape {tuple(rewards.shape)}")
    n_groups = check_groups(rewards.numel(), group_size)
    r = rewards.view(n_groups, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centred.reshape(-1)
    std = (centred.pow(2).sum(dim=1, keepdim=True) / max(group_size - 1, 1)).sqrt()
    return (centred / (std + eps)).reshape(-1)


def process_supervision_advantages(
    step_rewards: torch.Tensor,
    step_mask: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    scale_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """DeepSeekMath process supervision: A_it = sum of normalised step rewards ending at or after t.

    step_rewards: [B*G, T], the reward of a reasoning step placed on the token that ends the step.
    step_mask: [B*G, T], 1 on those step-end tokens (must lie inside `mask`).
    mask: [B*G, T] response tokens. Returns [B*G, T], 0 outside `mask`.
    Step rewards are normalised over all steps of all G rollouts of a prompt (mean, Bessel std).

    Worked example, G = 2, T = 3: row 0 has steps ending at t=0 (reward 1) and t=2 (reward 0);
    row 1 (two tokens) one step ending at t=1 (reward 1). Group steps {1, 0, 1}: mean 2/3,
    std 0.5774, normalised {0.577, -1.155, 0.577}:
      row 0 -> [0.577 - 1.155, -1.155, -1.155] = [-0.577, -1.155, -1.155]
      row 1 -> [0.577, 0.577, 0]
    """
    check_same_shape(mask, step_rewards=step_rewards, step_mask=step_mask)
    if bool(((step_mask > 0) & ~(mask > 0)).any()):
        rows = ((step_mask > 0) & ~(mask > 0)).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"step_mask marks step ends outside the response mask in rows {rows}")
    n_groups = check_groups(mask.shape[0], group_size, "step_rewards")
    r = zero_outside(step_rewards, step_mask) * step_mask
    per_group = lambda x: x.view(n_groups, -1).sum(dim=1)  # noqa: E731
    counts = per_group(step_mask)
    mean = per_group(r) / counts.clamp(min=1)
    mean_t = mean.repeat_interleave(group_size)[:, None]
    centred = (r - mean_t) * step_mask
    normed = centred
    if scale_by_std:
        std = (per_group(centred.pow(2)) / (counts - 1).clamp(min=1)).sqrt()
        normed = centred / (std.repeat_interleave(group_size)[:, None] + eps)
    # reverse cumulative sum over tokens: rewards of steps ending at or after t
    to_go = normed.flip(-1).cumsum(-1).flip(-1)
    return to_go * (mask > 0)


def overlong_penalty(
    lengths: torch.Tensor, *, max_length: int, buffer: int, penalty: float = 1.0
) -> torch.Tensor:
    """DAPO soft over-length punishment, to add to the task reward.

    lengths: [N] response lengths in tokens. Returns [N] float in [-penalty, 0]:
    0 up to max_length - buffer, then a linear ramp to -penalty at max_length, -penalty beyond.
    Example, max_length 10, buffer 4: lengths [6, 8, 10, 12] -> [0, -0.5, -1, -1].
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong buffer ({buffer}) must be in (0, max_length={max_length}]")
    start = max_length - buffer
    over = (lengths.to(torch.float32) - start).clamp(min=0, max=buffer)
    return -penalty * over / buffer
