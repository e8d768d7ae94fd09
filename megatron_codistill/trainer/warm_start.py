"""The supervised warm start on gold solutions before RL (config `warm_start`; fresh runs only).

The small model, then the large one, takes `warm_start.<model>_steps` steps of token-mean NLL on
(prompt, gold solution + EOS) pairs at a cosine learning rate from `<model>_lr` down to
`min_lr_ratio` of it. A frozen teacher (the large model in `kd_grpo` and `opd`) is warm-started too
and then frozen: it would otherwise teach with random weights.

The warm start never advances the RL schedule (it sets each step's lr itself), and it ends with
fresh Adam moments, so RL step k runs at the RL schedule's value k, warmup included.

Progress ({model: steps done}) is part of every checkpoint taken during the warm start: every
`warm_start.checkpoint_every` steps and when a signal arrives (checked between steps), so a
preempted warm start continues where it stopped instead of from scratch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from megatron_codistill.faults import fault_point
from megatron_codistill.log import get_logger
from megatron_codistill.trainer.supervised import sft_update

log = get_logger(__name__)
MODELS = ("small", "large")


def plan(run) -> dict[str, int]:
    """{model: warm-start steps} of the models this run warm-starts (those it builds, steps > 0)."""
    w = run.cfg.warm_start
    steps = {"small": w.small_steps, "large": w.large_steps}
    return {name: steps[name] for name in MODELS if steps[name] > 0 and name in run.policies}


def cosine_lr(peak: float, i: int, steps: int, min_ratio: float = 0.0) -> float:
    """Learning rate of warm-start step i (0-based) of `steps`: cosine from `peak` (i = 0) towards
    `min_ratio * peak` (reached at i = steps)."""
    floor = min_ratio * peak
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * i / steps))


def gold_pairs(run, n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """`n` (prompt, gold solution + EOS) pairs drawn at random from the training set."""
    problems = run.prompts.sample_warm(n, random.Random(seed))
    eos = run.tokenizer.eos_token_id
    return [(p.prompt_ids, run.tokenizer(p.solution, add_special_tokens=False)["input_ids"] + [eos])
            for p in problems]


def warm_start(run, progress: dict[str, int], *, should_stop: Callable[[], bool],
               checkpoint: Callable[[dict[str, int]], None]) -> bool:
    """Run (or continue, from `progress`) the warm start; True when it is complete.

    `progress` is updated in place. `should_stop()` (collective) is asked after every step; on True
    the progress is checkpointed and False returned. `checkpoint(progress)` saves the run.
    """
    w = run.cfg.warm_start
    per_rank = max(w.batch_size // run.world_size, 1)
    lrs = {"small": w.small_lr, "large": w.large_lr}
    for name, steps in plan(run).items():
        policy = run.policies[name]
        for i in range(progress.get(name, 0), steps):
            seed = (run.cfg.run.seed * 7919 + i) * 1009 + run.rank
            metrics = sft_update(run, [name], gold_pairs(run, per_rank, seed), per_rank,
                                 lr=cosine_lr(lrs[name], i, steps, w.min_lr_ratio))
            progress[name] = i + 1
            fault_point("warm_start.step")
            if i % 50 == 0 or i == steps - 1:
                log.info("warm start %s %d/%d: nll %.4f", name, i + 1, steps, metrics[f"{name}/loss"])
            if should_stop():
                checkpoint(progress)
                return False
            if w.checkpoint_every and (i + 1) % w.checkpoint_every == 0 and i + 1 < steps:
                checkpoint(progress)
        finish(policy)
    return True


def finish(policy) -> None:
    """End of a model's warm start: RL starts on fresh moments at the start of its schedule, with the
    KL reference (if any) reset to the warm-started weights; a frozen teacher drops its optimizer."""
    if policy.trainable:
        policy.reset_optimizer()
        policy.reset_reference()
    else:
        policy.freeze()
