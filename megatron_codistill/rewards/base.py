"""What every reward returns, and the signature a reward function has."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class RewardResult:
    """The reward of one response and why it got it."""

    score: float
    """The reward: for math 1.0 correct, 0.0 otherwise; for R1 format the weighted sum of `parts`."""
    reason: str
    """Why, for math: "correct"; "wrong"; "no_answer" (no final answer found); "too_long" (an answer over
    `verify.MAX_ANSWER_CHARS`); "unparsable_reference" (math-verify cannot parse the gold and the answer is
    not its exact text); "unparsable_answer" (nor the answer); "invalid_input" (not a string); "timeout"
    (over the CPU budget or the deadline); "worker_died"; "error:<ExceptionName>"."""
    extracted: str | None = None
    """The answer found in the response (before normalisation), whenever there was one, timeouts included."""
    parts: dict[str, float] = field(default_factory=dict)
    """Weighted components of `score`, e.g. {"correct": 1.0, "think_close": 0.25}; empty for plain math."""


@runtime_checkable
class RewardFn(Protocol):
    """A batched reward: one float per response.

    `context` may carry `prompts: list[str]`, `prompt_ids: list[list[int]]` and
    `response_ids: list[list[int]]` (one entry per response); functions take what they need and
    ignore the rest, so every reward (rule-based, user plug-in, learned model) has this signature.
    """

    def __call__(self, responses: list[str], references: list[str], **context: Any) -> list[float]: ...
