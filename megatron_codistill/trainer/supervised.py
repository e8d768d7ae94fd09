"""`sft` mode (chain-of-thought distillation) and the supervised update the warm start shares.

`sft` mode (DESIGN §2): each step the teacher (the large model, through the rollout engine) samples
`sft.samples_per_problem` solutions per prompt, the correct ones are kept and the student (the small
model) is fine-tuned on them; with `sft.file` the solutions come from a JSONL of {prompt, response}.
Departure: solutions are sampled step by step (online) rather than in one offline pass, so the
phase checkpoints and resumes like RL.
"""

from __future__ import annotations

import torch

from megatron_codistill.log import get_logger
from megatron_codistill.rollout.base import Rollout, RolloutBatch, SamplingParams
from megatron_codistill.trainer import objectives as obj
from megatron_codistill.trainer.exchange import all_gather_rows, gather_batch, row_slice, take_rows
from megatron_codistill.trainer.metrics import PhaseTimer

log = get_logger(__name__)


def pack(run, pairs: list[tuple[list[int], list[int]]], rows: int) -> RolloutBatch:
    """(prompt ids, response ids) pairs -> exactly `rows` rows, the response tokens masked in.

    Missing rows are padding with an empty mask, so that every rank contributes the same number of
    rows and any data-parallel split of the gathered batch is even.
    """
    filler = (pairs[0][0] if pairs else [run.pad_id], [run.pad_id])
    padded = pairs[:rows] + [filler] * (rows - len(pairs[:rows]))
    batch = RolloutBatch.from_rollouts([[Rollout(p, r, [0.0] * len(r), "stop")] for p, r in padded],
                                       run.pad_id)
    batch.response_mask[len(pairs):] = 0.0
    return batch


def sft_update(run, names: list[str], pairs: list[tuple[list[int], list[int]]], rows: int, *,
               lr: float | None = None) -> dict:
    """One optimizer step of each model in `names` on the pairs of all ranks (`rows` per rank);
    `lr` None follows each model's schedule, a number runs the step at it (see Policy.update)."""
    batch = gather_batch(pack(run, pairs, rows), run.pad_id)
    metrics: dict[str, float] = {}
    for name in names:
        policy = run.policies[name]
        part = take_rows(batch, row_slice(batch.tokens.shape[0], 1, policy.layout.dp_rank, policy.layout.dp))
        mask = part.response_mask
        den = obj.global_denominator(mask, "token_mean", policy.layout.dp_group, policy.layout.dp)
        out = policy.update(part.tokens, obj.sft_loss_fn(mask, den), lr=lr)
        metrics.update({f"{name}/{k}": float(v) for k, v in out.items()})
    return metrics


def sft_step(run, step: int) -> dict[str, float]:
    """One step of `sft` mode: teacher solutions (kept if correct) -> one student update."""
    s, timer = run.cfg.algorithm.sft, PhaseTimer()
    with timer("generate"):
        problems = run.prompts.next_batch()
        if s.file:
            pairs = [(p.prompt_ids, p.response_ids) for p in problems]
            kept = torch.ones(len(pairs))
        else:
            sampling = SamplingParams(temperature=s.temperature, top_p=run.sampling.top_p,
                                      top_k=run.sampling.top_k, max_new_tokens=run.sampling.max_new_tokens,
                                      stop_token_ids=run.sampling.stop_token_ids)
            groups = run.engine.generate([p.prompt_ids for p in problems], s.samples_per_problem, sampling)
            flat = [(p, r) for p, g in zip(problems, groups) for r in g]
            scores = run.reward([run.decode(r.response_ids) for _, r in flat], [p.reference for p, _ in flat])
            kept = torch.tensor([float(x > 0) for x in scores])
            pairs = [(p.prompt_ids, r.response_ids) for (p, r), k in zip(flat, kept) if k > 0]
    all_kept = all_gather_rows(kept)
    metrics = {"sft/kept_frac": float(all_kept.mean()), "sft/kept": float(all_kept.sum())}
    if all_kept.sum() > 0:
        names = ["small", "large"] if s.train_large else ["small"]
        with timer("update"):
            metrics.update(sft_update(run, names, pairs, len(kept)))
    metrics.update(timer.metrics())
    return metrics
