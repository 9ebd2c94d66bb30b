"""Comparison statistics against hand computations and published values on fixed inputs."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments.compare import stats

# The demo's spread (issue report): scaled_dot and linear, seeds 0/1/2.
SCALED_DOT = [0.836, 0.793, 0.898]
LINEAR = [0.375, 0.316, 0.262]
T_975_DF2 = 4.302652729911275  # Student's t quantile, 0.975, 2 degrees of freedom (tables)


def test_mean_interval_is_students_t_by_hand():
  s = stats.summarize(SCALED_DOT)
  mean = sum(SCALED_DOT) / 3
  sd = math.sqrt(sum((x - mean) ** 2 for x in SCALED_DOT) / 2)
  half = T_975_DF2 * sd / math.sqrt(3)
  assert (s.n, s.method, s.statistic) == (3, "t", "mean")
  assert s.center == pytest.approx(mean, abs=1e-12)
  assert s.std == pytest.approx(sd, abs=1e-12)
  assert (s.low, s.high) == pytest.approx((mean - half, mean + half), abs=1e-9)


def test_one_value_has_no_interval_and_constant_values_a_point_interval():
  one = stats.summarize([0.5])
  assert (one.n, one.center, one.std, one.low, one.high, one.method) == (1, 0.5, None, None, None,
                                                                         None)  # fmt: skip
  same = stats.summarize([0.25, 0.25, 0.25])
  assert (same.std, same.low, same.high) == (0.0, 0.25, 0.25)
  assert stats.summarize([1.0, float("nan"), 3.0]).n == 2  # NaNs dropped
  with pytest.raises(ValueError, match="at least one"):
    stats.summarize([])
  with pytest.raises(ValueError, match="valid: mean, median"):
    stats.summarize([1.0, 2.0], "mode")


def test_median_interval_is_a_bootstrap_inside_the_data():
  values = [10.0, 11.0, 12.0, 13.0, 50.0]  # a skewed sample: the median ignores the outlier
  s = stats.summarize(values, "median")
  assert (s.center, s.method, s.statistic) == (12.0, "bootstrap", "median")
  assert 10.0 <= s.low <= 12.0 <= s.high <= 50.0
  assert stats.summarize(values, "median") == s  # seeded: the same interval every time


def test_paired_t_test_by_hand_and_against_scipy():
  base = dict(enumerate(SCALED_DOT))
  other = dict(enumerate(LINEAR))
  d = np.asarray(LINEAR) - np.asarray(SCALED_DOT)
  t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
  p_by_hand = 2 * scipy_stats.t.sf(abs(t), 2)
  result = stats.paired(base, other)
  assert (result.n, result.test) == (3, "t")
  assert result.mean == pytest.approx(d.mean(), abs=1e-12)
  assert result.p == pytest.approx(p_by_hand, rel=1e-9)
  assert result.p == pytest.approx(0.011145382125182993, rel=1e-9)
  half = T_975_DF2 * d.std(ddof=1) / math.sqrt(3)
  assert (result.low, result.high) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-9)


def test_paired_uses_only_shared_seeds_and_wilcoxon_is_exact():
  base = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0, 9: 100.0}
  other = {0: 2.0, 1: 4.0, 2: 6.0, 3: 8.0, 4: 10.0, 7: -100.0}
  result = stats.paired(base, other, "wilcoxon")
  assert result.n == 5 and result.mean == pytest.approx(3.0)
  assert result.p == pytest.approx(2 / 32)  # all 5 differences positive: 2 of 2^5 sign patterns
  assert stats.paired({0: 1.0}, {1: 1.0}) is None
  single = stats.paired({0: 1.0}, {0: 3.0})
  assert (single.n, single.mean, single.p, single.low) == (1, 2.0, None, None)
  assert stats.paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}).p == 1.0  # identical on every seed
  with pytest.raises(ValueError, match="valid: t, wilcoxon"):
    stats.paired(base, other, "z")


def test_holm_step_down_by_hand():
  # m = 4: sorted 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06 (monotone), 0.06
  assert stats.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
  assert stats.holm([0.5, None, 0.9]) == [pytest.approx(1.0), None, pytest.approx(1.0)]
  assert stats.holm([]) == []
  assert stats.holm([0.001]) == [0.001]


def test_verdicts_follow_the_adjusted_p_and_the_metric_direction():
  higher = stats.Paired(3, 0.1, 0.05, 0.15, 0.001, "t")
  assert stats.verdict(higher, 0.01, "max") == "better"
  assert stats.verdict(higher, 0.01, "min") == "worse"  # a higher loss is worse
  assert stats.verdict(higher, 0.05, "max") == "no detectable difference"
  assert stats.verdict(stats.Paired(1, 0.1, None, None, None, "t"), None, "max") == "n = 1: no test"
  assert stats.verdict(None, None, "max") == "no shared seeds"


def test_seeds_needed_matches_the_standard_sample_size():
  # A paired t-test for a standardized effect of 1 (alpha 0.05 two-sided, power 0.8) needs 10
  # pairs (the G*Power value for d_z = 1); 0.5 needs 34.
  assert stats.seeds_needed(1.0, 1.0) == 10
  assert stats.seeds_needed(0.5, 1.0) == 34
  assert stats.seeds_needed(0.05, 0.05) == 10  # only the ratio matters
  assert stats.paired_power(1.0, 1.0, 9) < 0.8 <= stats.paired_power(1.0, 1.0, 10)
  assert stats.seeds_needed(1e-6, 1.0, limit=50) is None
  # far from the centre (d = 8.6): scipy's noncentral t must not turn the power into NaN, and a
  # larger difference never needs more seeds
  powers = [stats.paired_power(0.0845, 0.0098, n) for n in (2, 3, 4)]
  assert all(0 <= p <= 1 for p in powers) and powers == sorted(powers)
  needed = [stats.seeds_needed(f * 0.845, 0.0098) for f in (0.01, 0.02, 0.05, 0.1)]
  assert needed == sorted(needed, reverse=True) and needed[-1] == 3
