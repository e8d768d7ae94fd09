"""The task reward R(o_i) of a run, from `reward` in the config: one callable (texts, refs) -> scores."""

from __future__ import annotations

from collections.abc import Callable

from megatron_codistill.config import RewardConfig

Reward = Callable[[list[str], list[str]], list[float]]


def build_reward(r: RewardConfig) -> Reward:
    """math: math-verify in worker processes (+ optional R1 format bonuses); arith: the tiny task's
    exact match; plugin: a user function "package.module:function" (a registered name also works)."""
    if r.kind == "arith":
        from megatron_codistill.rewards.arith import score_arith

        return lambda texts, refs: [r.correct * s for s in score_arith(texts, refs)]
    if r.kind == "plugin":
        from megatron_codistill.rewards import load_reward_fn

        return load_reward_fn(r.plugin)
    from megatron_codistill.rewards import R1RewardWeights, configure_default_pool, score_r1

    configure_default_pool(num_workers=r.workers, timeout_s=r.timeout_s)
    weights = R1RewardWeights(correct=r.correct, think_close=r.format_think, answer_close=r.format_answer)
    return lambda texts, refs: [x.score for x in score_r1(texts, refs, weights=weights)]
