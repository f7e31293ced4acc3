"""The few statistics the cross-validation report needs, written out so that each number can be checked.

* :func:`summarize`: mean, sample standard deviation and a Student-t confidence interval (across folds,
  n is small, so t rather than normal quantiles).
* :func:`paired_t_test`: focal vs BCE on the same folds (same split, same initial weights); with Cohen's
  d_z = mean(difference) / sd(difference) as the effect size.
* :func:`wilcoxon_signed_rank`: the same comparison across validation slices, without assuming normal
  differences (per-slice Dice is far from normal); with the matched-pairs rank-biserial correlation
  r = (R+ - R-) / (R+ + R-) as the effect size.

Two-sided p-values throughout. ``tests/test_stats.py`` checks every number against SciPy's own routines.
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
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half, confidence)


def _paired(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a, b = _values(a), _values(b)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length, got {a.size} and {b.size}")
    return a - b


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Student's paired t-test of ``a`` vs ``b`` (same as ``scipy.stats.ttest_rel``) and Cohen's d_z.

    With all differences equal (sd 0) t and d_z are ±inf (or NaN for no difference) and p is 0 (or 1).
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
    t = mean / (sd / math.sqrt(n))
    p = float(2 * stats.t.sf(abs(t), df=n - 1))
    return PairedTest("paired t-test", n, mean, t, p, mean / sd, "Cohen's d_z")


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
