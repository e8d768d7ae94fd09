"""Periodic evaluation on held-out sets (`data.eval`): accuracy of every model of the run.

Each rank decodes its share of the problems (greedy by default) and the counts are summed over
ranks. The generator model is evaluated through the run's engine; the other model through an
embedded engine that receives its weights by the same export path (embedded runs only).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from megatron_codistill.log import get_logger
from megatron_codistill.rollout.base import SamplingParams
from megatron_codistill.trainer.engines import embedded_engine, sync_engine

log = get_logger(__name__)


def _engine_for(run, name: str):
    if name == run.generator:
        return run.engine
    if run.cfg.rollout.engine != "embedded":
        return None
    cache = run.extra.setdefault("eval_engines", {})
    if name not in cache:
        cache[name] = embedded_engine(run.policies[name], run.cfg.rollout, pad_id=run.pad_id,
                                      seed=run.cfg.run.seed + run.rank)
    engine = cache[name]
    sync_engine(engine, run.policies[name], run.cfg.rollout, version=run.engine_version,
                run_dir=run.cfg.run.dir)
    return engine


def evaluate(run, step: int) -> dict[str, float]:
    """{"eval/<set>/<model>_accuracy" (greedy), "..._sampled_accuracy"}: fraction correct per set/model.

    Sampled evaluation draws from its own seed (per run seed, step and rank), never from the engine's
    training generator: evaluating changes no later rollout, whatever the schedule."""
    r = run.cfg.run
    kinds = {}
    if r.eval_greedy:
        kinds["accuracy"] = SamplingParams(temperature=0.0, max_new_tokens=run.sampling.max_new_tokens,
                                           stop_token_ids=run.sampling.stop_token_ids)
    if r.eval_sampled:
        kinds["sampled_accuracy"] = dataclasses.replace(run.sampling,
                                                        seed=(r.seed * 100_003 + step) * 1009 + run.rank)
    metrics: dict[str, float] = {}
    for eval_set in run.cfg.data.eval:
        problems = run.prompts.eval_problems(eval_set)
        mine = problems[run.rank :: run.world_size]
        for name in sorted(set(run.policies) & set(r.eval_models)):
            engine = _engine_for(run, name)
            if engine is None:
                continue
            for key, sampling in kinds.items():
                metrics[f"eval/{eval_set.name}/{name}_{key}"] = _accuracy(run, engine, mine, sampling)
    return metrics


def _accuracy(run, engine, problems, sampling: SamplingParams) -> float:
    """Fraction of `problems` (this rank's share) answered correctly, over all ranks."""
    groups = engine.generate([p.prompt_ids for p in problems], 1, sampling) if problems else []
    texts = [run.decode(g[0].response_ids) for g in groups]
    scores = run.reward(texts, [p.reference for p in problems]) if problems else []
    counts = torch.tensor([sum(float(s >= run.cfg.reward.correct) for s in scores), float(len(problems))])
    if dist.is_initialized():
        dist.all_reduce(counts)
    return float(counts[0] / counts[1].clamp(min=1))
