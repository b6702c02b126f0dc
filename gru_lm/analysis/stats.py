"""Summaries of repeated runs: mean, spread, and Welch's t interval for the difference of two means.

A run trained under a time budget moves from run to run (the clock, not only the seed, decides how
many steps it takes), so one run per config cannot tell two configs 0.01 apart. With several seeds
per config, `difference` says whether the 95% interval of the difference of the means excludes zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Spread:
    n: int
    mean: float
    std: float  # sample standard deviation (n − 1); NaN for one value
    low: float
    high: float


def spread(values: list[float]) -> Spread:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else math.nan
    return Spread(n, mean, math.sqrt(var), min(values), max(values))


@dataclass
class Difference:
    """a − b with its 95% interval (Welch); NaN bounds where either side has a single value."""

    diff: float
    low: float
    high: float
    df: float

    @property
    def decided(self) -> bool:
        """The interval excludes zero."""
        return not math.isnan(self.low) and (self.low > 0 or self.high < 0)


def difference(a: list[float], b: list[float], level: float = 0.95) -> Difference:
    """Welch's t interval for mean(a) − mean(b): no assumption that the two spreads are equal."""
    sa, sb = spread(a), spread(b)
    diff = sa.mean - sb.mean
    if sa.n < 2 or sb.n < 2:
        return Difference(diff, math.nan, math.nan, math.nan)
    va, vb = sa.std**2 / sa.n, sb.std**2 / sb.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(diff, diff, diff, math.inf)
    df = (va + vb) ** 2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    half = t_quantile(0.5 + level / 2, df) * se
    return Difference(diff, diff - half, diff + half, df)


def t_quantile(p: float, df: float) -> float:
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom, by bisection on its CDF."""
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for t ≥ 0: 1 − I_x(df/2, 1/2) / 2 with x = df / (df + t²) (the regularized incomplete beta)."""
    return 1.0 - 0.5 * _incomplete_beta(df / (df + t * t), df / 2, 0.5)


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, by its continued fraction (Numerical Recipes'
    betacf with Lentz's method), on the side of x where the fraction converges fast."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(x, a, b) / a
    return 1.0 - front * _beta_fraction(1 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    tiny = 1e-300
    clamp = lambda v: v if abs(v) > tiny else tiny  # noqa: E731
    c, d = 1.0, 1.0 / clamp(1.0 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, 300):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d, c = 1.0 / clamp(1.0 + even * d), clamp(1.0 + even / c)
        h *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d, c = 1.0 / clamp(1.0 + odd * d), clamp(1.0 + odd / c)
        h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h
