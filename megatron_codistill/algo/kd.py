"""On-policy distillation reward for the small model: the large model's log-likelihood ratio.

Legend: B rows, T tokens. d_it = l^L_it - l^S_it on the small model's own samples, scored by both
models at their pre-update weights. Since o ~ pi_S, E_S[sum_t d_it] = -KL(pi_S || pi_L): a KD reward
that pushes the small model towards the large one through the ordinary policy gradient
(E_S[sg(d) grad log pi_S] = -grad KL(pi_S || pi_L), checked by enumeration in tests/algo).

Departures from the paper: d carries no gradient. Its direct term is zero in expectation anyway
(grad_S E_S[d] through d alone is -E_S[grad log pi_S] = 0), so only the score-function term is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from megatron_codistill.algo.masked import check_same_shape, lookup, masked_mean, masked_sum, zero_outside


def kd_log_ratio(teacher_logp: torch.Tensor, student_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """d = l^L - l^S: [B, T], detached, 0 outside `mask`. Example: l^L = log 0.5, l^S = log 0.25 -> 0.693."""
    check_same_shape(mask, teacher_logp=teacher_logp, student_logp=student_logp)
    return zero_outside((teacher_logp - student_logp).detach(), mask)


KD_REDUCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": lambda d, mask: masked_mean(d, mask, dim=-1),
    "sum": lambda d, mask: masked_sum(d, mask, dim=-1),
}


def sequence_kd(d: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KD_i = token mean (or sum) of d over response i: [B, T] -> [B]; 0 for an empty response.

    Example: d = [[1, 3, x]], mask = [[1, 1, 0]] -> mean [2.0], sum [4.0].
    Mean is the paper's choice (a length-neutral per-token KL); sum is the exact -log pi_S(o)/pi_L(o).
    """
    return lookup(KD_REDUCTIONS, reduction, "kd_reduction")(d, mask)


def kd_reward(task_rewards: torch.Tensor, kd: torch.Tensor, *, alpha: float, kappa: float) -> torch.Tensor:
    """r~_i = R_i + alpha * clip(KD_i, -kappa, kappa): [B], [B] -> [B].

    Example, alpha 0.5, kappa 10: R [1, 0], KD [-2, -30] -> [0, -5].
    The clip keeps a few degenerate samples (where the large model finds the text absurd) from
    swamping the task reward once whitened.
    """
    if kappa <= 0:
        raise ValueError(f"kd kappa ({kappa}) must be > 0")
    if task_rewards.shape != kd.shape:
        raise ValueError(f"task_rewards {tuple(task_rewards.shape)} and kd {tuple(kd.shape)} differ")
    return task_rewards + alpha * kd.clamp(-kappa, kappa)


def token_kd_advantages(
    advantages: torch.Tensor, d: torch.Tensor, mask: torch.Tensor, *, alpha: float, kappa: float | None = None
) -> torch.Tensor:
    """A_it = A_i + alpha * clip(d_it, -kappa, kappa), added after whitening: [B], [B, T] -> [B, T].

    Example, alpha 0.1, no clip: A [1], d [[2, -4, x]], mask [[1, 1, 0]] -> [[1.2, 0.6, 0]].
    Unlike the sequence reward, token t is credited only with its own d_t, not the d of later tokens:
    its expected gradient is that of sum_t E_{o<t}[KL_t(pi_S || pi_L)] with the prefix distribution held
    fixed (enumeration test), a lower-variance, biased version of grad KL(pi_S || pi_L).
    """
    check_same_shape(mask, d=d)
    if advantages.shape != (mask.shape[0],):
        raise ValueError(f"advantages must be [B]={mask.shape[0]}, got {tuple(advantages.shape)}")
    dd = d if kappa is None else d.clamp(-kappa, kappa)
    return zero_outside(advantages[:, None] + alpha * dd, mask)


def align_responses(values: torch.Tensor, from_mask: torch.Tensor, to_mask: torch.Tensor) -> torch.Tensor:
    """Move per-token values of each row's response from one layout to another: [B, T_a] -> [B, T_b].

    The k-th response token under `from_mask` lands on the k-th under `to_mask` (0 elsewhere); every row
    must hold as many response tokens in both. Used when the teacher scored the response after extra
    context (the reference-conditioned reward), so its response tokens sit at other positions.
    Example: values [[x, x, -1, -2]], from_mask [[0, 0, 1, 1]], to_mask [[1, 1, 0]] -> [[-1, -2, 0]].
    """
    check_same_shape(from_mask, values=values)
    n_a, n_b = (from_mask > 0).sum(dim=1), (to_mask > 0).sum(dim=1)
    if from_mask.shape[0] != to_mask.shape[0] or bool((n_a != n_b).any()):
        bad = (n_a != n_b).nonzero().flatten().tolist() if n_a.shape == n_b.shape else "all"
        raise ValueError(f"from_mask and to_mask hold different response lengths in rows {bad}")
    width = int(n_b.max()) if n_b.numel() else 0
    on_a, on_b = from_mask > 0, to_mask > 0
    # scatter the response tokens to the front of a [B, width + 1] buffer (column `width` takes padding)
    rank_a = torch.where(on_a, on_a.long().cumsum(dim=1) - 1, width)
    buf = torch.zeros(values.shape[0], width + 1, dtype=values.dtype, device=values.device)
    buf = buf.scatter(1, rank_a, zero_outside(values, from_mask))
    rank_b = torch.where(on_b, on_b.long().cumsum(dim=1) - 1, width)
    return zero_outside(torch.gather(buf, 1, rank_b), to_mask)


def ghost_response_reward(
    teacher_logp: torch.Tensor,
    teacher_mask: torch.Tensor,
    student_logp: torch.Tensor,
    student_mask: torch.Tensor,
) -> torch.Tensor:
    """Reference-conditioned reward r_it = log pi_T(o_it | q, y*, o_i<t) - log pi_S(o_it | q, o_i<t).

    The teacher scored the response o_i after the prompt *and* a gold or teacher solution y*:
    teacher_logp, teacher_mask: [B, T_t]; student_logp, student_mask: [B, T_s]. Returns [B, T_s]
    aligned with the student, detached, 0 outside `student_mask`.
    Example: teacher mask [[0, 0, 1, 1]] logp [[x, x, -1, -2]], student mask [[1, 1, 0]] logp
    [[-3, -1, x]] -> [[2, -1, 0]].
    To use it as the KD signal of `small_model_loss`, pass
    `align_responses(teacher_logp, teacher_mask, student_mask)` as its teacher_logp.
    Departure: with y* in context the teacher's E_S[r] is no longer -KL(pi_S || pi_T(.|q)); it is a
    reward towards the teacher's answer-aware distribution.
    """
    check_same_shape(student_mask, student_logp=student_logp)
    aligned = align_responses(teacher_logp.detach(), teacher_mask, student_mask)
    return zero_outside(aligned - student_logp.detach(), student_mask)
