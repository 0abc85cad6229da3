"""The report's statistics (``metaft.stats``): t quantiles, t-intervals and paired differences, checked
against hand computations and scipy."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from metaft.stats import fmt_delta, fmt_per_seed, mean_std, paired, t_interval, t_quantile_975


def test_t_interval_matches_a_hand_computation():
    ci = t_interval([1.0, 2.0, 3.0])  # mean 2, s = 1, t(0.975, 2) = 4.303
    assert ci["mean"] == pytest.approx(2.0)
    assert ci["half"] == pytest.approx(4.303 * 1 / math.sqrt(3))
    assert (ci["low"], ci["high"]) == pytest.approx((2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)))
    assert ci["n"] == 3
    ci = t_interval([0.01, 0.03, 0.02])
    assert ci["high"] - ci["mean"] == pytest.approx(4.303 * 0.01 / math.sqrt(3))


def test_fewer_than_two_values_have_no_interval():
    assert t_interval([0.1]) is None
    assert t_interval([]) is None
    assert mean_std([0.4]) == (0.4, None)
    with pytest.raises(ValueError):
        t_quantile_975(0)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 29, 30, 31, 45, 200])
def test_t_quantiles_agree_with_scipy(df):
    assert t_quantile_975(df) == pytest.approx(sps.t.ppf(0.975, df), abs=1.5e-3)


def test_the_interval_agrees_with_scipy():
    values = [0.012, -0.004, 0.031, 0.008, 0.019]
    ci = t_interval(values)
    low, high = sps.t.interval(0.95, len(values) - 1, loc=sps.tmean(values), scale=sps.sem(values))
    assert (ci["low"], ci["high"]) == pytest.approx((low, high), abs=1e-5)


def test_paired_uses_the_shared_seeds_only():
    p = paired({1: 0.80, 2: 0.70, 3: 0.75, 9: 0.1}, {1: 0.79, 2: 0.68, 3: 0.72, 7: 0.9})
    diffs = [0.01, 0.02, 0.03]
    assert p["n"] == 3 and p["delta_mean"] == pytest.approx(0.02)
    assert p["delta_high"] - p["delta_mean"] == pytest.approx(4.303 * 0.01 / math.sqrt(3))
    assert (p["wins"], p["losses"], p["ties"]) == (3, 0, 0)
    assert sum(diffs) / 3 == pytest.approx(p["delta_mean"])
    assert paired({1: 0.5}, {2: 0.5}) is None


def test_one_shared_seed_is_a_difference_without_interval():
    p = paired({1: 0.75, 2: 0.6}, {1: 0.5})
    assert p["n"] == 1 and p["delta_mean"] == pytest.approx(0.25)
    assert p["delta_low"] is None and p["delta_high"] is None
    assert fmt_delta(p) == "+25.00 (1 seed: no interval)"


def test_fmt_delta_shows_the_interval_in_points():
    p = paired({1: 0.81, 2: 0.82, 3: 0.83}, {1: 0.80, 2: 0.80, 3: 0.80})
    half = 4.303 * 1 / math.sqrt(3)  # diffs 1, 2, 3 points
    assert fmt_delta(p) == f"+2.00 [{2 - half:+.2f}, {2 + half:+.2f}]" == "+2.00 [-0.48, +4.48]"


def test_per_seed_values_are_labelled_and_in_numeric_seed_order():
    assert fmt_per_seed({100: 0.5, 13: 0.71234, 21: 0.6}) == "13: 71.23, 21: 60.00, 100: 50.00"
    assert fmt_per_seed({42: 0.695}, decimals=1) == "42: 69.5"
