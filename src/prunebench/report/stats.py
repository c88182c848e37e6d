"""Small statistics without scipy: Student-t quantiles, t-intervals over paired differences, and
the normal-approximation sample size for a paired comparison."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import cache

ALPHA = 0.05  # two-sided: 95 % intervals
POWER = 0.8


def t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df`` >= 1: the closed form of Abramowitz &
    Stegun 26.7.3/26.7.4 in theta = atan(t / sqrt(df))."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


@cache
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``df`` degrees of freedom, e.g.
    t_quantile(0.975, 7) = 2.3646; bisection on theta to 1e-12."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    mass = 2 * p - 1
    lo, hi = 0.0, math.pi / 2
    while hi - lo > 1e-12:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_mass(math.tan(mid) * math.sqrt(df), df) < mass else (lo, mid)
    return math.tan((lo + hi) / 2) * math.sqrt(df)


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` paired differences, their standard deviation and the two-sided 95 %
    t-interval mean ± t(0.975, n-1) · sd / sqrt(n) (None without two pairs)."""

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n−1; None for one value), in floats: statistics.stdev
    works in exact fractions, far slower over thousands of runs."""
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def t_interval(diffs: list[float], alpha: float = ALPHA) -> Interval:
    n = len(diffs)
    if n == 0:
        raise ValueError("t_interval needs at least one difference")
    mean, sd = mean_sd(diffs)
    if sd is None:
        return Interval(n, mean, None, None, None)
    half = t_quantile(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
    return Interval(n, mean, sd, mean - half, mean + half)


def pairs_needed(mean: float, sd: float | None, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Pairs that resolve a mean difference ``mean`` at pair spread ``sd`` with the given power:
    n = ((z_{1-alpha/2} + z_{power}) · sd / |mean|)², at least 2; None when it cannot be sized."""
    if sd is None or not mean:
        return None
    z = statistics.NormalDist()
    n = ((z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * sd / abs(mean)) ** 2
    return max(2, math.ceil(n - 1e-9))
