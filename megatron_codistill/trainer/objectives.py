"""Where the algorithm config meets the pure objectives of `algo`: per-micro-batch loss closures.

Each `*_inputs` computes, once over one model's slice of the batch (whole groups), what the clipped
surrogate needs besides the current log-probs: advantages (whitened per group), the tokens the loss
averages over, importance weights, and the metrics of those (`algo.*_advantages`). `surrogate_loss_fn`
then returns `loss_fn(logprobs [b, T-1], entropy, rows) -> (loss, metrics)` for `Policy.update` (see
parallel.train_step): `rows` index any subset of the slice, so micro-batches may be cut by rows or by
a token budget. `denominator` is the global count of the chosen aggregation divided by the
data-parallel size, so that summed micro-batch losses, averaged by DDP over replicas, equal the loss
of the global batch exactly; token-mean metrics are weighted by each micro-batch's share of the
tokens, so that their sums do not depend on how the batch was cut either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_codistill import algo
from megatron_codistill.algo.masked import masked_mean
from megatron_codistill.config import AlgorithmConfig

# policy_loss metrics that add up over rows (with the global denominator); the others are token means.
_ADDITIVE = ("loss/policy", "loss/total", "loss/num_tokens")


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
    step_rewards: torch.Tensor | None = None
    """Process supervision: the reward of each step on its last token (task_reward.StepRewards)."""
    step_mask: torch.Tensor | None = None
    """Process supervision: 1 on each step's last token."""


@dataclass
class LossInputs:
    """Per-row inputs of one model's surrogate over its slice [n, T-1], fixed for the whole update."""

    old_logp: torch.Tensor
    surrogate: algo.SurrogateInputs
    """Advantages, the tokens the loss averages over, importance weights, and their metrics."""
    ref_logp: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        return self.surrogate.mask

    @property
    def metrics(self) -> dict[str, torch.Tensor]:
        return self.surrogate.metrics

    def take(self, rows) -> LossInputs:
        """The inputs of a subset of the rows (a mini-batch); the metrics stay those of the slice."""
        s = self.surrogate
        return LossInputs(
            old_logp=self.old_logp[rows],
            surrogate=algo.SurrogateInputs(s.advantages[rows], s.mask[rows],
                                           None if s.weights is None else s.weights[rows], s.metrics),
            ref_logp=None if self.ref_logp is None else self.ref_logp[rows],
        )


def small_inputs(a: AlgorithmConfig, s: Scored, *, task_weight: float = 1.0,
                 kd_alpha: float | None = None) -> LossInputs:
    """CoDistill / KD-GRPO / OPD on the small model (kd_alpha 0 with no teacher = plain GRPO)."""
    teacher = s.teacher_logp if s.teacher_logp is not None else s.old_logp
    process = s.step_rewards is not None
    surrogate = algo.small_model_advantages(
        s.old_logp, teacher, (0.0 if process else task_weight) * s.task_rewards, s.mask, group_size=a.group_size,
        alpha=a.kd_alpha if kd_alpha is None else kd_alpha, kappa=a.kd_kappa, kd_reduction=a.kd_reduction,
        token_alpha=a.kd_token_alpha if s.teacher_logp is not None else 0.0, scale_by_std=a.advantage_std,
    )
    if process:  # the whitened KD reward (alone: the task reward is 0 above) plus the step advantages
        surrogate = with_process_advantages(a, s, surrogate, weight=task_weight, add=True)
    return LossInputs(s.old_logp, surrogate, s.ref_logp)


def large_inputs(a: AlgorithmConfig, s: Scored) -> LossInputs:
    """The large model on the small model's rollouts, weighted by importance weights."""
    surrogate = algo.large_model_advantages(
        s.old_logp, s.behaviour_logp, s.task_rewards, s.mask, group_size=a.group_size, scheme=a.is_weight,
        cap=a.is_cap, seq_cap=a.is_seq_cap, scale_by_std=a.advantage_std,
    )
    if s.step_rewards is not None:
        surrogate = with_process_advantages(a, s, surrogate)
    return LossInputs(s.old_logp, surrogate, s.ref_logp)


def grpo_inputs(a: AlgorithmConfig, s: Scored) -> LossInputs:
    """Plain GRPO of a model on its own rollouts."""
    surrogate = algo.grpo_advantages(s.task_rewards, s.mask, group_size=a.group_size, scale_by_std=a.advantage_std)
    if s.step_rewards is not None:
        surrogate = with_process_advantages(a, s, surrogate)
    return LossInputs(s.old_logp, surrogate, s.ref_logp)


def with_process_advantages(a: AlgorithmConfig, s: Scored, surrogate: algo.SurrogateInputs, *, weight: float = 1.0,
                            add: bool = False) -> algo.SurrogateInputs:
    """Process supervision (`algorithm.supervision: process`): the step advantages
    A_it = sum over steps ending at or after t of the group-normalised step rewards
    (`algo.process_supervision_advantages` of weight * step_rewards) replace the outcome advantages of
    `surrogate` (add=True: are added to them, the small model's whitened KD reward). The kept-token mask and
    importance weights stay. Metrics ps/adv_abs_mean, adv/abs_mean of the result; the outcome reward/* stay
    for monitoring."""
    step_mask = s.step_mask * (s.mask > 0).to(s.step_mask.dtype)  # steps of rows dynamic sampling dropped go too
    ps = algo.process_supervision_advantages(weight * s.step_rewards, step_mask, s.mask, a.group_size,
                                             scale_by_std=a.advantage_std)
    adv = ps
    if add:
        base = surrogate.advantages
        adv = ps + (base[:, None] if base.dim() == 1 else base) * (s.mask > 0).to(ps.dtype)
    with torch.no_grad():
        metrics = {**surrogate.metrics, "ps/adv_abs_mean": masked_mean(ps.abs(), s.mask),
                   "adv/abs_mean": masked_mean(adv.abs(), s.mask)}
        if add:  # the KD-only surrogate above saw a zero task reward
            metrics["reward/task_mean"] = (weight * s.task_rewards).float().mean()
    return algo.SurrogateInputs(adv, surrogate.mask, surrogate.weights, metrics)


def behaviour_weighted(inputs: LossInputs, behaviour_logp: torch.Tensor, stale: torch.Tensor,
                       cap: float) -> LossInputs:
    """The decoupled objective on stale rollouts (scheduler.mode async): the surrogate keeps clipping
    around the trainer's recomputed (proximal) log-probs `inputs.old_logp`, and each token of a stale row
    is weighted by min(pi_prox / mu, cap), mu the behaviour policy that sampled it.

    stale: [n] bool, rows sampled with older weights than the model's current ones. Rows sampled with
    the current weights are on-policy (pi_prox = mu by construction: the difference measured between
    engine and trainer is numerics, reported as rollout/logprob_diff) and keep weight 1, so a run with no
    stale row computes exactly the sequential objective. Metrics: async/weight_mean, async/truncated_frac,
    async/ess over the stale rows.
    """
    s = inputs.surrogate
    stale_mask = s.mask * stale[:, None].to(s.mask.dtype)
    iw = algo.importance_weights(inputs.old_logp, behaviour_logp, stale_mask, scheme="token_tis", cap=cap)
    w = torch.where(stale[:, None], iw.weights, torch.ones_like(iw.weights))
    weights = w if s.weights is None else s.weights * w
    metrics = {**s.metrics, **{f"async/{k.removeprefix('is/')}": v for k, v in iw.metrics.items()
                               if k in ("is/weight_mean", "is/truncated_frac", "is/ess")}}
    return LossInputs(inputs.old_logp, algo.SurrogateInputs(s.advantages, s.mask, weights, metrics), inputs.ref_logp)


def surrogate_loss_fn(inputs: LossInputs, opts: algo.PolicyLossOptions, denominator):
    """loss_fn over any rows of `inputs`: `algo.policy_loss` on those rows with the global denominator.

    Metrics: the additive ones as they are, token means times the rows' share of the tokens (their
    sums over micro-batches are the slice's token means). `inputs.metrics` are left to the caller
    (pass them as Policy.update's batch_metrics).
    """
    s = inputs.surrogate
    total = s.mask.sum().clamp(min=1)

    def loss_fn(logp, entropy, rows):
        mask = s.mask[rows]
        out = algo.policy_loss(
            logp, inputs.old_logp[rows], s.advantages[rows], mask, options=opts,
            weights=None if s.weights is None else s.weights[rows],
            ref_logp=None if inputs.ref_logp is None else inputs.ref_logp[rows], entropy=entropy,
            denominator=denominator,
        )
        share = mask.sum() / total
        return out.loss, {k: v if k in _ADDITIVE else v * share for k, v in out.metrics.items()}

    return loss_fn


def sft_loss_fn(mask: torch.Tensor, denominator):
    """Token-mean negative log-likelihood of the response tokens (its metrics add up over rows)."""

    def loss_fn(logp, entropy, rows):
        out = algo.sft_loss(logp, mask[rows], denominator=denominator)
        return out.loss, out.metrics

    return loss_fn
