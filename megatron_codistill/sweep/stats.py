"""Means with Student-t intervals over seeds (the sweep's only statistics).

For n values x_1..x_n: mean m, sample standard deviation s (n - 1 in the denominator) and the 95%
interval m +- t_{0.975, n-1} * s / sqrt(n). For paired differences (d_s = x_s(value) - x_s(baseline) over
the seeds s both cells finished) the same interval applies to the d_s; its half-width is the smallest
mean difference that this many seeds with this spread would have told apart from 0 at the 5% level.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from scipy import stats

LEVEL = 0.95


@dataclass
class Estimate:
    n: int
    mean: float | None
    sd: float | None
    """Sample standard deviation; None for n < 2."""
    lo: float | None
    hi: float | None
    half: float | None
    """Half-width of the interval; None for n < 2."""

    def to_dict(self) -> dict:
        return asdict(self)


def t_quantile(p: float, df: int) -> float:
    """Quantile p of Student's t with `df` degrees of freedom."""
    return float(stats.t.ppf(p, df))


def estimate(xs: list[float], level: float = LEVEL) -> Estimate:
    """Mean and `level` t-interval of `xs` (no interval below two values; all None for none)."""
    n = len(xs)
    if n == 0:
        return Estimate(0, None, None, None, None, None)
    m = sum(xs) / n
    if n < 2:
        return Estimate(1, m, None, None, None, None)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Estimate(n, m, sd, m - half, m + half, half)
