"""The math reward: 1.0 when the response's final answer equals the reference, else 0.0.

The answer is found by `extract.extract_answer` (`<answer>` tags, last `\\boxed{}`, `####`,
"the answer is"), rewritten by `normalize.normalize_answer`, compared exactly when both sides are
plain numbers (`numeric.py`) and by math-verify otherwise, in the processes of a `VerifierPool`.
"""

from __future__ import annotations

import os
import threading

from megatron_codistill.rewards.base import RewardResult
from megatron_codistill.rewards.pool import VerifierPool

_default: VerifierPool | None = None
_default_lock = threading.Lock()
_default_settings = {"num_workers": min(4, os.cpu_count() or 1), "timeout_s": 5.0}


def configure_default_pool(num_workers: int | None = None, timeout_s: float | None = None) -> None:
    """Set the size and per-answer deadline of the shared pool (restarts it if it is running)."""
    global _default
    if num_workers is not None:
        _default_settings["num_workers"] = num_workers
    if timeout_s is not None:
        _default_settings["timeout_s"] = timeout_s
    with _default_lock:
        if _default is not None:
            _default.close()
            _default = None


def default_pool() -> VerifierPool:
    """The process-wide pool `score_math` uses, started on first use (and again in a forked child)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed or _default._pid != os.getpid():
            _default = VerifierPool(**_default_settings)
        return _default


def shutdown_default_pool() -> None:
    """Stop the shared pool's processes now (they also stop at interpreter exit)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
            _default = None


def verify_batch(
    responses: list, references: list[str], *, pool: VerifierPool | None = None
) -> list[RewardResult]:
    """Score and reason for each response against the reference at the same index.

    references[i] is a final answer (`18`, `\\frac{\\pi}{2}`, `4.5e33`) or a solution holding one in
    `\\boxed{}` or after `####`. Never raises on a response: anything odd scores 0 with a reason.
    """
    return (pool or default_pool()).score(responses, references)


def score_math(
    responses: list[str], references: list[str], *, pool: VerifierPool | None = None
) -> list[float]:
    """1.0 where responses[i] answers references[i] correctly, else 0.0."""
    return [r.score for r in verify_batch(responses, references, pool=pool)]


def math_reward(responses: list[str], references: list[str], **context) -> list[float]:
    """`RewardFn` form of `score_math` on the shared pool."""
    return score_math(responses, references)
