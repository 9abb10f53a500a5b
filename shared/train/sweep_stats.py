"""The statistics of `ternary sweep`'s table: mean, sample standard deviation, and the Welch t
interval of a difference of two means (SciPy is not a dependency, so Student's t is computed here).

Welch's interval does not assume the two variants have the same seed-to-seed variance:
  diff = mean_a - mean_b, se = sqrt(s_a^2 / n_a + s_b^2 / n_b),
  df = se^4 / ((s_a^2 / n_a)^2 / (n_a - 1) + (s_b^2 / n_b)^2 / (n_b - 1))   (Welch-Satterthwaite),
  diff +- t_{1 - alpha/2, df} * se.
With three seeds per side df is about 2-4, so t is 2.8-4.3, not 1.96: few seeds give wide intervals,
which is the point of printing them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def sample_std(xs: list[float]) -> float | None:
    """The standard deviation with n - 1 in the denominator; None for fewer than two values."""
    if len(xs) < 2:
        return None
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), for x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; else use symmetry
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (real, > 0) degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, for 0.5 <= p < 1 (bisection on the CDF: monotone, no derivatives)."""
    if not 0.5 <= p < 1:
        raise ValueError(f"p must be in [0.5, 1), got {p}")
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if student_t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass
class Difference:
    """mean_a - mean_b with its Welch interval; `low`/`high` are None when either side has one value."""
    diff: float
    low: float | None
    high: float | None
    df: float | None
    level: float


def welch_interval(a: list[float], b: list[float], level: float = 0.95) -> Difference:
    """The difference of means of `a` and `b` and its Welch t confidence interval at `level`."""
    diff = mean(a) - mean(b)
    sa, sb = sample_std(a), sample_std(b)
    if sa is None or sb is None:
        return Difference(diff, None, None, None, level)
    va, vb = sa * sa / len(a), sb * sb / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:  # every seed gave the same number on both sides: no spread to widen the interval
        return Difference(diff, diff, diff, None, level)
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    half = student_t_quantile(0.5 + level / 2.0, df) * se
    return Difference(diff, diff - half, diff + half, df, level)
