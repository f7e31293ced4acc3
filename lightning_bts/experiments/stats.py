"""The few statistics the cross-validation report needs, on SciPy's routines, with the report's conventions.

* :func:`summarize`: mean, sample standard deviation and a Student-t confidence interval (across folds,
  n is small, so t rather than normal quantiles): ``scipy.stats.ttest_1samp(...).confidence_interval()``.
* :func:`paired_t_test`: focal vs BCE on the same folds (same split, same initial weights), by
  ``scipy.stats.ttest_rel``; with Cohen's d_z = mean(difference) / sd(difference) as the effect size.
* :func:`wilcoxon_signed_rank`: the same comparison across validation slices, without assuming normal
  differences (per-slice Dice is far from normal); with the matched-pairs rank-biserial correlation
  r = (R+ - R-) / (R+ + R-) as the effect size.

What this module adds to SciPy: input checks, NaN intervals for one value, and a defined answer where SciPy
warns (all differences equal). Two-sided p-values throughout; ``tests/test_stats.py`` checks every number
against an independent formula.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    """``mean`` ± ``sd`` over ``n`` values and the ``confidence`` t-interval [``ci_low``, ``ci_high``]."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95


@dataclass(frozen=True)
class PairedTest:
    """A paired two-sided test of ``a - b``: statistic, p-value, effect size and the mean difference."""

    name: str
    n: int
    mean_difference: float
    statistic: float
    p_value: float
    effect_size: float
    effect_size_name: str


def _values(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError("no values to summarise")
    if not np.isfinite(array).all():
        raise ValueError(f"values must be finite, got {array.tolist()[:10]}")
    return array


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample sd (ddof=1) and the two-sided t-interval of the mean; NaN sd/CI for a single value."""
    x = _values(values)
    n = x.size
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan, confidence)
    if np.all(x == x[0]):  # SciPy warns of precision loss here; the interval is the point itself
        return Summary(n, mean, 0.0, mean, mean, confidence)
    interval = stats.ttest_1samp(x, popmean=0.0).confidence_interval(confidence_level=confidence)
    return Summary(n, mean, float(x.std(ddof=1)), float(interval.low), float(interval.high), confidence)


def _paired(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a, b = _values(a), _values(b)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length, got {a.size} and {b.size}")
    return a - b


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Student's paired t-test of ``a`` vs ``b`` (``scipy.stats.ttest_rel``) and Cohen's d_z.

    With all differences equal (sd 0, where SciPy warns and gives NaN for no difference) t and d_z are ±inf
    (or NaN for no difference) and p is 0 (or 1).
    """
    d = _paired(a, b)
    n = d.size
    if n < 2:
        raise ValueError("a paired t-test needs at least 2 pairs")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        t = math.copysign(math.inf, mean) if mean else math.nan
        p = 0.0 if mean else 1.0
        return PairedTest("paired t-test", n, mean, t, p, t, "Cohen's d_z")
    result = stats.ttest_rel(_values(a), _values(b))
    return PairedTest("paired t-test", n, mean, float(result.statistic), float(result.pvalue), mean / sd,
                      "Cohen's d_z")


def rank_biserial(a: Sequence[float], b: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation: (R+ - R-) / (R+ + R-) over the non-zero differences.

    +1: every ``a`` beats its ``b``; -1: the reverse; 0: no tendency (or no non-zero difference).
    """
    d = _paired(a, b)
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    ranks = stats.rankdata(np.abs(d))  # ties get average ranks, as in the signed-rank test
    plus, minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((plus - minus) / (plus + minus))


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of ``a`` vs ``b`` (zero differences dropped, Wilcoxon's rule).

    The statistic is min(R+, R-) as SciPy reports it; the p-value is SciPy's (exact for small samples
    without ties, normal approximation otherwise). Effect size: :func:`rank_biserial`.
    """
    d = _paired(a, b)
    if not np.any(d != 0):
        return PairedTest("Wilcoxon signed-rank", d.size, 0.0, 0.0, 1.0, 0.0, "rank-biserial r")
    result = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return PairedTest(
        "Wilcoxon signed-rank", d.size, float(d.mean()), float(result.statistic), float(result.pvalue),
        rank_biserial(a, b), "rank-biserial r",
    )
