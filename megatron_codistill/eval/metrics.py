"""Benchmark metrics from per-sample scores: greedy accuracy, unbiased pass@k, majority vote maj@k."""

from __future__ import annotations

import math
from collections.abc import Callable


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


Equivalent = Callable[[list[tuple[str, str]]], list[bool]]
"""equivalent([(answer, other), ...]) -> whether each `answer` verifies against `other` (one batch)."""


def vote_key(answer: str | None) -> str | None:
    """The normalised answer without spaces: answers with the same key are the same answer (None: abstain)."""
    if answer is None:
        return None
    from megatron_codistill.rewards.normalize import normalize_answer

    return "".join(normalize_answer(answer).split()) or None


def majority_votes(problems: list[tuple[list[str | None], list[float]]], equivalent: Equivalent | None = None
                   ) -> list[bool]:
    """maj@k of each problem: whether the largest group of equivalent answers is the correct one.

    Groups are by verified equivalence, not text: the samples scored correct form one group (each
    verified equal to the gold, so `204`, `204.0` and `2.04 \\times 10^2` vote together); the wrong
    answers are grouped by `equivalent` (each new answer joins the first group whose first answer it
    verifies against), after merging identical `vote_key`s. Without `equivalent`, by `vote_key` only.
    Ties go to the group seen first; a sample without an answer does not vote; no answer at all is wrong.
    All problems' comparisons of a round go to `equivalent` in one batch (one round per distinct answer).
    """
    states = []
    for answers, scores in problems:
        if len(answers) != len(scores):
            raise ValueError(f"{len(answers)} answers but {len(scores)} scores")
        correct = [i for i, (a, s) in enumerate(zip(answers, scores)) if a is not None and s >= 1.0]
        wrong: dict[str, list[int]] = {}  # vote key -> sample indices, in order of first appearance
        for i, (a, s) in enumerate(zip(answers, scores)):
            if s < 1.0 and vote_key(a) is not None:
                wrong.setdefault(vote_key(a), []).append(i)
        states.append({"answers": answers, "correct": correct, "todo": list(wrong.values()), "groups": []})
    while any(st["todo"] for st in states):
        queries, owners = [], []
        for st in states:
            if st["todo"] and equivalent is not None:
                new = st["answers"][st["todo"][0][0]]
                for g, group in enumerate(st["groups"]):
                    queries.append((new, st["answers"][group[0]]))
                    owners.append((st, g))
        verdicts = equivalent(queries) if queries else []
        joined: dict[int, int] = {}
        for (st, g), same in zip(owners, verdicts):
            if same and id(st) not in joined:
                joined[id(st)] = g
        for st in states:
            if st["todo"]:
                samples = st["todo"].pop(0)
                if id(st) in joined:
                    st["groups"][joined[id(st)]] += samples
                else:
                    st["groups"].append(samples)
    out = []
    for st in states:
        groups = [(len(g), -min(g), False) for g in st["groups"]]
        if st["correct"]:
            groups.append((len(st["correct"]), -min(st["correct"]), True))
        out.append(bool(groups) and max(groups)[2])
    return out


def majority_correct(answers: list[str | None], scores: list[float], equivalent: Equivalent | None = None) -> bool:
    """`majority_votes` of one problem."""
    return majority_votes([(answers, scores)], equivalent)[0]


def k_values(n: int) -> list[int]:
    """The k reported for n samples: powers of two below n, and n."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) < n]
    return ks + [n]
