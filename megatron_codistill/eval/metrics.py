"""Benchmark metrics from per-sample scores: greedy accuracy, unbiased pass@k, majority vote maj@k."""

from __future__ import annotations

import math


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is correct) from n samples, c of them correct.

    1 - C(n-c, k) / C(n, k) (Chen et al. 2021), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i),
    which never forms the huge binomials.
    Example: n = 4, c = 1, k = 2 -> 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def vote_key(answer: str | None) -> str | None:
    """How answers are grouped for the vote: the normalised answer without spaces (None: abstain)."""
    if answer is None:
        return None
    from megatron_codistill.rewards.normalize import normalize_answer

    return "".join(normalize_answer(answer).split()) or None


def majority_correct(answers: list[str | None], scores: list[float]) -> bool:
    """Whether the most frequent answer among samples that gave one is correct.

    Ties go to the answer seen first; a sample without an answer does not vote; no answer at all is
    wrong. Correctness of the winning answer is the score of its first sample.
    """
    if len(answers) != len(scores):
        raise ValueError(f"{len(answers)} answers but {len(scores)} scores")
    count: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        key = vote_key(a)
        if key is not None:
            count[key] = count.get(key, 0) + 1
            first.setdefault(key, i)
    if not count:
        return False
    winner = max(count, key=lambda key: (count[key], -first[key]))
    return scores[first[winner]] >= 1.0


def k_values(n: int) -> list[int]:
    """The k reported for n samples: powers of two below n, and n."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) < n]
    return ks + [n]
