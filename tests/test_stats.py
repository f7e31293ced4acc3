"""The report's statistics against textbook formulas, SciPy's other routines and numbers of the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from lightning_bts.experiments.stats import paired_t_test, rank_biserial, summarize, wilcoxon_signed_rank

RNG = np.random.default_rng(7)
FOLDS_A = np.array([0.81, 0.79, 0.84, 0.77, 0.83])
FOLDS_B = np.array([0.74, 0.76, 0.73, 0.75, 0.72])


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_summary_matches_scipy_t_interval(confidence):
    summary = summarize(FOLDS_A, confidence)
    low, high = sps.t.interval(confidence, df=4, loc=FOLDS_A.mean(), scale=sps.sem(FOLDS_A))
    assert summary.n == 5
    assert summary.mean == pytest.approx(FOLDS_A.mean())
    assert summary.sd == pytest.approx(np.std(FOLDS_A, ddof=1))
    assert (summary.ci_low, summary.ci_high) == (pytest.approx(low), pytest.approx(high))


def test_summary_and_t_test_keep_the_reports_numbers():
    """Golden values from the hand-written formulas these replaced (a CV report's numbers must not move)."""
    summary = summarize(FOLDS_A)
    assert (summary.ci_low, summary.ci_high) == (pytest.approx(0.7724441541060125, abs=1e-12),
                                                 pytest.approx(0.8435558458939876, abs=1e-12))
    test = paired_t_test(FOLDS_A, FOLDS_B)
    assert (test.statistic, test.p_value) == (pytest.approx(3.5641684448545248, rel=1e-10),
                                              pytest.approx(0.023498103972636495, rel=1e-10))


def test_summary_of_constant_values_is_a_point():
    summary = summarize([0.1, 0.1, 0.1])
    assert summary.sd == 0.0 and summary.ci_low == summary.ci_high == pytest.approx(0.1)


def test_summary_of_one_value_has_no_interval():
    summary = summarize([0.5])
    assert summary.mean == 0.5 and math.isnan(summary.sd) and math.isnan(summary.ci_low)


def test_summary_rejects_nan_and_empty():
    with pytest.raises(ValueError, match="finite"):
        summarize([0.5, float("nan")])
    with pytest.raises(ValueError, match="no values"):
        summarize([])


def test_paired_t_matches_the_textbook_formula():
    result = paired_t_test(FOLDS_A, FOLDS_B)
    diff = FOLDS_A - FOLDS_B
    t = diff.mean() / (diff.std(ddof=1) / math.sqrt(diff.size))
    assert result.statistic == pytest.approx(t)
    assert result.p_value == pytest.approx(2 * sps.t.sf(abs(t), df=diff.size - 1))
    assert result.effect_size == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert result.mean_difference == pytest.approx(diff.mean())


def test_paired_t_constant_difference_and_length_mismatch():
    result = paired_t_test([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert result.statistic == math.inf and result.p_value == 0.0
    assert paired_t_test([1.0, 2.0], [1.0, 2.0]).p_value == 1.0
    with pytest.raises(ValueError, match="same length"):
        paired_t_test([1.0, 2.0], [1.0])


@pytest.mark.parametrize("n", [8, 60, 400])  # exact p-values for small n, normal approximation for large
def test_wilcoxon_matches_scipy(n):
    a = RNG.uniform(0, 1, n)
    b = np.clip(a - RNG.normal(0.05, 0.1, n), 0, 1)
    b[:2] = a[:2]  # zero differences are dropped
    result = wilcoxon_signed_rank(a, b)
    reference = sps.wilcoxon(a, b, zero_method="wilcox")
    assert result.statistic == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(reference.pvalue)
    # rank-biserial from SciPy's R+ (the one-sided statistic): r = (2 R+ - T) / T, T = m (m + 1) / 2
    r_plus = sps.wilcoxon(a, b, zero_method="wilcox", alternative="greater").statistic
    m = int(np.count_nonzero(a != b))
    total = m * (m + 1) / 2
    assert result.effect_size == pytest.approx((2 * r_plus - total) / total)


def test_rank_biserial_extremes():
    assert rank_biserial([2, 3, 4], [1, 1, 1]) == 1.0
    assert rank_biserial([1, 1, 1], [2, 3, 4]) == -1.0
    assert rank_biserial([1, 2], [1, 2]) == 0.0
    assert wilcoxon_signed_rank([1, 2], [1, 2]).p_value == 1.0
