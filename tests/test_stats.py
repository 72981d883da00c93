"""Intervals over seeds: Student's t quantiles against the tables, paired and Welch intervals by hand."""

import math

import pytest

from wtal.errors import WtalError
from wtal.stats import paired_interval, regularized_beta, seeds_for_half_width, t_cdf, t_quantile, welch_interval

# Two-sided 95 % critical values of Student's t (any statistics table).
T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 9: 2.2622, 10: 2.2281, 30: 2.0423, 100: 1.9840}


@pytest.mark.parametrize("df, expected", sorted(T_975.items()))
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-4)


def test_t_cdf_and_the_beta_function():
    assert t_cdf(0.0, 3) == pytest.approx(0.5)
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    assert t_cdf(2.0, 2) == pytest.approx(0.5 + 2.0 / (2 * math.sqrt(6.0)))  # closed form for 2 df
    assert regularized_beta(2.0, 3.0, 0.4) == pytest.approx(0.5248)  # I_0.4(2, 3) = 0.5248
    assert t_quantile(0.9, 1e6) == pytest.approx(1.2816, abs=1e-4)  # the normal's


def test_paired_interval_by_hand():
    interval = paired_interval([3.0, 5.0, 4.0, 6.0, 2.0], [1.0, 2.0, 2.0, 3.0, 2.0])
    diffs = [2.0, 3.0, 2.0, 3.0, 0.0]
    mean = sum(diffs) / 5
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4) / math.sqrt(5)
    assert (interval.diff, interval.se, interval.df, interval.n) == pytest.approx((mean, se, 4, 5))
    assert (interval.low, interval.high) == pytest.approx((mean - 2.7764 * se, mean + 2.7764 * se), abs=1e-3)
    assert interval.excludes_zero
    assert not paired_interval([1.0, 2.0, 3.0], [2.0, 1.0, 3.5]).excludes_zero


def test_welch_interval_by_hand():
    a, b = [10.0, 12.0, 11.0], [8.0, 9.0, 13.0, 10.0]
    interval = welch_interval(a, b)
    va, vb = 1.0 / 3, (14 / 3) / 4  # sample variances over n
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    assert (interval.diff, interval.se, interval.df) == pytest.approx((1.0, math.sqrt(va + vb), df))
    assert interval.high - interval.diff == pytest.approx(t_quantile(0.975, df) * math.sqrt(va + vb))


def test_too_few_values_are_refused():
    with pytest.raises(WtalError, match="paired_interval"):
        paired_interval([1.0], [2.0])
    with pytest.raises(WtalError, match="welch_interval"):
        welch_interval([1.0, 2.0], [3.0])


def test_seeds_for_half_width_inverts_the_paired_interval():
    # t(0.975, 4) / sqrt(5) = 1.2417 and t(0.975, 5) / sqrt(6) = 1.0495
    assert seeds_for_half_width(1.0, 1.25) == 5 and seeds_for_half_width(1.0, 1.24) == 6
    assert seeds_for_half_width(0.0, 0.1) == 2
    for sd, half in ((3.0, 2.0), (8.0, 1.5)):
        n = seeds_for_half_width(sd, half)
        assert t_quantile(0.975, n - 1) * sd / n**0.5 <= half < t_quantile(0.975, n - 2) * sd / (n - 1) ** 0.5
    with pytest.raises(WtalError, match="half_width > 0"):
        seeds_for_half_width(1.0, 0.0)
