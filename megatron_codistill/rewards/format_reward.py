"""The R1-Zero reward: correctness plus a bonus for each closing tag of the format.

CoDistill-GRPO (like DeepSeek-R1-Zero) prompts for `<think> ... </think> <answer> ... </answer>` and
rewards 1.0 for a correct answer + 0.25 for emitting `</think>` + 0.25 for emitting `</answer>`.
The answer is read from the last `<answer>` pair when there is one (a `\\boxed{}` inside it wins),
otherwise from the usual markers, so an unformatted but correct answer still earns its 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_codistill.rewards.base import RewardResult
from megatron_codistill.rewards.math_reward import verify_batch
from megatron_codistill.rewards.pool import VerifierPool


@dataclass(frozen=True)
class R1RewardWeights:
    """Weights of the R1-Zero reward (paper values as defaults)."""

    correct: float = 1.0
    """Added when the final answer verifies against the reference."""
    think_close: float = 0.25
    """Added when the response contains `</think>`."""
    answer_close: float = 0.25
    """Added when the response contains `</answer>` after an `<answer>`."""


def format_parts(response: object, weights: R1RewardWeights) -> dict[str, float]:
    """The two format components of one response (0 for anything that is not a string)."""
    if not isinstance(response, str):
        return {"think_close": 0.0, "answer_close": 0.0}
    opened = response.find("<answer>")
    closed = opened >= 0 and response.find("</answer>", opened) >= 0
    return {
        "think_close": weights.think_close if "</think>" in response else 0.0,
        "answer_close": weights.answer_close if closed else 0.0,
    }


def score_r1(
    responses: list,
    references: list[str],
    *,
    weights: R1RewardWeights | None = None,
    pool: VerifierPool | None = None,
) -> list[RewardResult]:
    """R1-Zero reward of each response; `parts` holds the weighted components, `score` their sum."""
    weights = weights or R1RewardWeights()
    out = []
    for response, verdict in zip(responses, verify_batch(responses, references, pool=pool)):
        parts = {"correct": weights.correct * verdict.score, **format_parts(response, weights)}
        out.append(RewardResult(sum(parts.values()), verdict.reason, verdict.extracted, parts))
    return out


def r1_reward(responses: list[str], references: list[str], **context) -> list[float]:
    """`RewardFn` form of `score_r1` with the paper's weights."""
    return [r.score for r in score_r1(responses, references)]

