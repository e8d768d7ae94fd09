"""The phases of one RL step (DESIGN §2); `trainer.scheduler` states their order.

launch (draw prompts, start G) -> collect (wait for the rollouts, task rewards R, PODS, gather the
global batch) -> score (both models' log-probs at their pre-update weights, shared by both updates)
-> update (small, large) -> the generator's new weights go to the rollout engine (`Run.sync_weights`).

Legend: N = prompts_per_step * G rollouts in the global batch, n a replica's slice, T tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_codistill import algo
from megatron_codistill.faults import fault_point
from megatron_codistill.rollout.base import Pending, RolloutBatch
from megatron_codistill.trainer import objectives as obj
from megatron_codistill.trainer.exchange import all_gather_rows, gather_batch, row_slice, take_rows
from megatron_codistill.trainer.metrics import PhaseTimer
from megatron_codistill.trainer.prompts import Problem


@dataclass
class InFlight:
    """The generation of one step's rollouts (this rank's prompts), started and not yet collected."""

    step: int
    problems: list[Problem]
    pending: Pending
    n: int
    """Rollouts per prompt (pods_n when PODS down-samples, else G)."""


def launch(run, step: int) -> InFlight:
    """Draw step `step`'s prompts and start their generation with the engine's current weights (G)."""
    problems = run.prompts.next_batch()
    n = run.cfg.algorithm.pods_n or run.cfg.algorithm.group_size
    fault_point("step.launch")
    return InFlight(step, problems, run.engine.generate_async([p.prompt_ids for p in problems], n, run.sampling), n)


@dataclass
class Collected:
    """One step's global batch after the reward (R) and the exchange, the same on every rank."""

    batch: RolloutBatch
    correct: torch.Tensor
    """[N] task reward of each rollout."""
    task: torch.Tensor
    """[N] task reward after the options that shape it (over-length penalty)."""


def collect(run, flight: InFlight, timer: PhaseTimer) -> Collected:
    """Wait for `flight`'s rollouts, reward them, apply PODS, gather the global batch."""
    a = run.cfg.algorithm
    with timer("generate"):
        groups = flight.pending.result()
    if flight.pending.interval is not None:
        timer.span("engine_generate", *flight.pending.interval)
    with timer("reward"):
        flat = [r for g in groups for r in g]
        refs = [p.reference for p in flight.problems for _ in range(flight.n)]
        rewards = torch.tensor(run.reward([run.decode(r.response_ids) for r in flat], refs))
        if a.pods_n:  # PODS: keep the G rollouts of largest task-reward variance per prompt
            keep = algo.max_variance_subset(rewards, flight.n, a.group_size).tolist()
            kept = [flat[i] for i in keep]
            groups = [kept[i : i + a.group_size] for i in range(0, len(kept), a.group_size)]
            rewards = rewards[keep]
        local = RolloutBatch.from_rollouts(groups, run.pad_id)
    with timer("exchange"):
        batch = gather_batch(local, run.pad_id)
        correct = all_gather_rows(rewards)
    return Collected(batch, correct, shape_task_rewards(run, batch, correct))


def rollout_metrics(batch: RolloutBatch, correct: torch.Tensor, who: str) -> dict[str, float]:
    lengths = batch.response_lengths.float()
    truncated = sum(r == "length" for r in batch.finish_reasons) / max(len(batch.finish_reasons), 1)
    return {f"{who}/task_reward": float(correct.mean()), f"{who}/response_length": float(lengths.mean()),
            f"{who}/truncated_frac": truncated}


def shape_task_rewards(run, batch: RolloutBatch, correct: torch.Tensor) -> torch.Tensor:
    """Task reward R_i [N] after the options that change it (a learned outcome model, DAPO over-length
    penalty); with reward.retrain the verifier's rewards `correct` label the batch for the reward model."""
    a = run.cfg.algorithm
    task = correct.float() if run.task_model is None else run.task_model(batch)  # reward.kind=model
    if run.retrainer is not None:  # iterative RL: the verifier's labels of this batch
        run.retrainer.collect(batch, correct)
    if a.overlong_buffer:
        task = task + algo.overlong_penalty(batch.response_lengths, max_length=run.sampling.max_new_tokens,
                                            buffer=a.overlong_buffer, penalty=a.overlong_penalty)
    return task


def _mask(run, batch: RolloutBatch, task: torch.Tensor) -> torch.Tensor:
    """Response mask [N, T-1]; with DAPO dynamic sampling, groups of equal rewards are masked out."""
    mask = batch.response_mask
    if run.cfg.algorithm.dynamic_sampling:
        keep = algo.nonconstant_groups(task, batch.group_size).repeat_interleave(batch.group_size)
        mask = mask * keep[:, None].to(mask.dtype)
    return mask


def score(run, batch: RolloutBatch) -> dict:
    """Old log-probs [N, T-1] (global rows) of every model that needs them, plus reference ones."""
    out: dict = {"metrics": {}}
    for name in ("small", "large"):
        policy = run.policies.get(name)
        if policy is None:
            continue
        needed = name == run.mode.generator or (name == "large" and run.mode.teacher_scores)
        if not needed:
            continue
        rows = row_slice(batch.tokens.shape[0], batch.group_size, policy.layout.dp_rank, policy.layout.dp)
        part = take_rows(batch, rows)
        lengths = part.prompt_lengths + part.response_lengths
        lp = policy.logprobs(part.tokens, lengths=lengths)
        out[name] = _gather(lp, policy, batch)
        if policy.reference is not None:
            out[f"{name}_ref"] = _gather(policy.logprobs(part.tokens, reference=True, lengths=lengths), policy, batch)
    gen = out[run.mode.generator]
    diff = (gen - batch.behaviour_logprobs).abs() * batch.response_mask
    n_tok = batch.response_mask.sum().clamp(min=1)
    out["metrics"].update({"rollout/logprob_diff_mean": float(diff.sum() / n_tok),
                           "rollout/logprob_diff_max": float(diff.max())})
    if run.mode.teacher_scores:
        d = (out["large"] - out["small"]) * batch.response_mask
        out["metrics"]["kd/approx_kl_small_large"] = float(-d.sum() / n_tok)  # E_S[l^S - l^L]
    if run.conditioner is not None:  # the small model's KD teacher sees a reference solution
        out["large_kd"], m = run.conditioner.teacher_logprobs(run, batch, out["large"])
        out["metrics"].update(m)
    if run.step_rewards is not None:  # process supervision
        out["step_rewards"], out["step_mask"], m = run.step_rewards(batch)
        out["metrics"].update(m)
    return out


def _gather(lp: torch.Tensor, policy, batch: RolloutBatch) -> torch.Tensor:
    """Per-replica log-probs -> global [N, T-1] on every rank (one row block per DP replica)."""
    T1 = batch.tokens.shape[1] - 1
    lp = torch.nn.functional.pad(lp, (0, T1 - lp.shape[1]))
    return all_gather_rows(lp, policy.layout.dp_group) if policy.layout.dp > 1 else lp


def update(run, name: str, batch: RolloutBatch, task: torch.Tensor, scores: dict,
           staleness: torch.Tensor | None = None) -> dict[str, float]:
    """epochs_per_step x mini_batches optimizer steps of model `name` on its replica's slice;
    returns the metrics of the last one. Advantages and importance weights are computed once over the
    slice's whole groups; micro-batches may then take any rows (micro_batch_size or micro_batch_tokens).

    staleness: [N] weight versions each rollout lags behind the generator (async schedules): the
    generator's stale rows get the decoupled objective's behaviour weights (objectives.behaviour_weighted);
    the large model in codistill corrects for mu with its own importance weights in any case."""
    a, policy = run.cfg.algorithm, run.policies[name]
    rows = row_slice(batch.tokens.shape[0], batch.group_size, policy.layout.dp_rank, policy.layout.dp)
    part = take_rows(batch, rows)
    T1 = part.tokens.shape[1] - 1
    mask = _mask(run, batch, task)[rows, :T1]
    sl = lambda key: None if key not in scores else scores[key][rows, :T1]  # noqa: E731
    s = obj.Scored(mask=mask, old_logp=sl(name), task_rewards=task[rows], ref_logp=sl(f"{name}_ref"),
                   step_rewards=sl("step_rewards"), step_mask=sl("step_mask"))
    opts = obj.policy_options(a, run.sampling.max_new_tokens, use_kl=policy.reference is not None)
    if name == "small":
        s.teacher_logp = sl("large_kd" if "large_kd" in scores else "large") if run.mode.teacher_scores else None
        inputs = obj.small_inputs(a, s, task_weight=run.mode.task_weight,
                                  kd_alpha=a.kd_alpha if run.mode.teacher_scores else 0.0)
    elif run.mode.generator == "large":
        inputs = obj.grpo_inputs(a, s)
    else:
        s.behaviour_logp = part.behaviour_logprobs[:, :T1]
        inputs = obj.large_inputs(a, s)
    if name == run.mode.generator and staleness is not None and bool((staleness > 0).any()):
        inputs = obj.behaviour_weighted(inputs, part.behaviour_logprobs[:, :T1], staleness[rows] > 0,
                                        run.cfg.scheduler.behaviour_weight_cap)
    lengths = part.prompt_lengths + part.response_lengths
    metrics: dict[str, float] = {}
    n_rows, mb = part.tokens.shape[0], part.tokens.shape[0] // a.mini_batches
    for _ in range(a.epochs_per_step):
        for start in range(0, n_rows, mb):
            r = slice(start, start + mb)
            sub = inputs.take(r)
            den = obj.global_denominator(sub.mask, a.loss_agg, policy.layout.dp_group, policy.layout.dp)
            metrics = policy.update(part.tokens[r], obj.surrogate_loss_fn(sub, opts, den), lengths=lengths[r],
                                    batch_metrics=inputs.metrics)
    return {f"{name}/{k}": float(v) for k, v in metrics.items()}
