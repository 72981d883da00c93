"""Differences over seeds with their 95 % intervals: pure functions over arrays.

A difference between two configurations trained with the same seeds is judged by the paired
t-interval of the per-seed differences (a seed fixes the initial weights and the batches of both);
between runs whose seeds do not correspond (two codebases), by Welch's t-interval. Student's t
quantiles come from the regularized incomplete beta function (a continued fraction), so nothing
beyond the standard library is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wtal.errors import WtalError

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean difference, its standard error, the degrees of freedom and the two-sided interval."""

    diff: float
    se: float
    df: float
    low: float
    high: float
    n: int  # seeds (paired) or runs in the smaller group (Welch)

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict:
        return {"diff": self.diff, "se": self.se, "df": self.df, "low": self.low, "high": self.high, "n": self.n}


def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _incomplete_beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _incomplete_beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` > 0 degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0 < p < 1 or not df > 0:
        raise WtalError(f"t_quantile: expected 0 < p < 1 and df > 0, found p={p!r}, df={df!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return 0.5 * (low + high)


def _interval(diff: float, se: float, df: float, n: int, level: float) -> Interval:
    half = t_quantile(0.5 + level / 2.0, df) * se if se > 0 else 0.0
    return Interval(diff=diff, se=se, df=df, low=diff - half, high=diff + half, n=n)


def paired_interval(a, b, level: float = LEVEL) -> Interval:
    """Mean of ``a - b`` seed by seed (arrays of the same seeds, in the same order) with its
    t-interval on n - 1 degrees of freedom; at least 2 seeds."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise WtalError(f"paired_interval: expected two equal-length lists of >= 2 values, found {a.shape} and {b.shape}")
    diffs = a - b
    return _interval(float(diffs.mean()), float(diffs.std(ddof=1) / math.sqrt(diffs.size)), diffs.size - 1, diffs.size, level)


def welch_interval(a, b, level: float = LEVEL) -> Interval:
    """mean(a) - mean(b) for independent groups, with Welch's t-interval (Welch-Satterthwaite
    degrees of freedom); at least 2 values in each group."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or b.ndim != 1 or a.size < 2 or b.size < 2:
        raise WtalError(f"welch_interval: expected two lists of >= 2 values, found {a.shape} and {b.shape}")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if se > 0 else float(a.size + b.size - 2)
    return _interval(float(a.mean() - b.mean()), se, df, min(a.size, b.size), level)


def seeds_for_half_width(sd: float, half_width: float, level: float = LEVEL, most: int = 100_000) -> int:
    """The fewest seeds n (>= 2) whose paired interval is at most ``half_width`` either side when
    the per-seed differences spread by ``sd``: t(n - 1) * sd / sqrt(n) <= half_width. Planning a
    comparison before running it; ``most`` bounds the search."""
    if not sd >= 0 or not half_width > 0:
        raise WtalError(f"seeds_for_half_width: expected sd >= 0 and half_width > 0, found sd={sd!r}, half_width={half_width!r}")
    quantile = 0.5 + level / 2.0
    for n in range(2, most + 1):
        if t_quantile(quantile, n - 1) * sd / math.sqrt(n) <= half_width:
            return n
    raise WtalError(f"seeds_for_half_width: more than {most} seeds for sd={sd:g}, half_width={half_width:g}")
