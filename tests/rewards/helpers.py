"""Test-only verifiers and reward plug-ins, imported by path from the pool's worker processes."""

import signal
import time

from megatron_codistill.rewards.base import RewardResult


def hanging_verify(response: str, reference: str, budget_s: float) -> RewardResult:
    """Scores "ok" as 1; on "HANG" blocks SIGALRM and sleeps, like C code that never yields."""
    if response == "HANG":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(3600)
    return RewardResult(1.0 if response == "ok" else 0.0, "stub")


def length_reward(responses, references, **context):
    """A user plug-in: the number of characters of each response."""
    return [len(r) for r in responses]


def short_reward(responses, references, **context):
    """A broken plug-in: one score too few."""
    return [0.0] * (len(responses) - 1)


NOT_CALLABLE = 3


def broken_verify(response: str, reference: str, budget_s: float) -> RewardResult:
    """A verifier whose self-check can never pass (it calls everything wrong)."""
    return RewardResult(0.0, "wrong")


broken_verify.self_check = (("\\boxed{1}", "1", 1.0),)
