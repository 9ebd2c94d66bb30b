"""Statistics of a comparison over seeds: intervals, paired tests against a baseline, power.

The numbers come from `scipy.stats`; only Holm's step-down correction (which scipy does not
provide) is written here.

    summarize([0.84, 0.79, 0.90])          -> Summary(n=3, center=0.843, std=0.055, low=0.707, ...)
    paired({0: .84, 1: .79}, {0: .37, 1: .32})  -> Paired(n=2, mean=-0.47, ..., p=...)
    holm([0.01, 0.04, 0.03])               -> [0.03, 0.06, 0.06]
"""

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
TESTS = ("t", "wilcoxon")


@dataclasses.dataclass(frozen=True)
class Summary:
  """Values over seeds: their `statistic` (mean or median), sample std and a two-sided
  `CONFIDENCE` interval of that statistic.

  `low`/`high` are None when n < 2 (no interval from one value); `method` says how the interval
  was obtained: 't' (Student's t on the mean) or 'bootstrap' (percentile bootstrap of the median).
  """

  n: int
  center: float
  std: float | None
  low: float | None
  high: float | None
  method: str | None
  statistic: str = "mean"


def summarize(values: Sequence[float], statistic: str = "mean") -> Summary:
  """Mean (t interval) or median (bootstrap interval) of `values`; NaNs are dropped."""
  x = np.asarray([v for v in values if v is not None and not math.isnan(v)], float)
  n = len(x)
  if n == 0:
    raise ValueError("summarize() needs at least one value")
  std = float(np.std(x, ddof=1)) if n > 1 else None
  if statistic == "mean":
    center = float(np.mean(x))
    if n < 2:
      return Summary(n, center, None, None, None, None)
    if std == 0.0:
      return Summary(n, center, 0.0, center, center, "t")
    low, high = stats.t.interval(CONFIDENCE, n - 1, loc=center, scale=stats.sem(x))
    return Summary(n, center, std, float(low), float(high), "t")
  if statistic == "median":
    center = float(np.median(x))
    if n < 2 or std == 0.0:
      bounds = (center, center) if n > 1 else (None, None)
      return Summary(n, center, std, *bounds, "bootstrap" if n > 1 else None, "median")
    result = stats.bootstrap(
      (x,), np.median, confidence_level=CONFIDENCE, method="percentile", random_state=0
    )
    ci = result.confidence_interval
    return Summary(n, center, std, float(ci.low), float(ci.high), "bootstrap", "median")
  raise ValueError(f"statistic={statistic!r}; valid: mean, median")


@dataclasses.dataclass(frozen=True)
class Paired:
  """`other - baseline` over the seeds both have: mean difference, its interval, a p-value."""

  n: int
  mean: float
  low: float | None
  high: float | None
  p: float | None  # two-sided; None when it cannot be computed (n < 2)
  test: str


def paired(
  baseline: Mapping[int, float], other: Mapping[int, float], test: str = "t"
) -> Paired | None:
  """Paired difference over shared seeds; `test`: 't' (scipy.stats.ttest_rel) or 'wilcoxon'
  (scipy.stats.wilcoxon, exact for small n). None when no seed is shared."""
  if test not in TESTS:
    raise ValueError(f"test={test!r}; valid: {', '.join(TESTS)}")
  seeds = sorted(set(baseline) & set(other))
  if not seeds:
    return None
  a = np.asarray([baseline[s] for s in seeds], float)
  b = np.asarray([other[s] for s in seeds], float)
  d = b - a
  summary = summarize(d)
  if len(seeds) < 2:
    return Paired(1, summary.center, None, None, None, test)
  if np.all(d == 0):
    p = 1.0  # identical on every seed
  else:
    with warnings.catch_warnings():  # nearly equal differences: scipy warns, the value stands
      warnings.simplefilter("ignore", RuntimeWarning)
      test_fn = stats.ttest_rel if test == "t" else stats.wilcoxon
      p = float(test_fn(b, a).pvalue)
  return Paired(len(seeds), summary.center, summary.low, summary.high, None if math.isnan(p) else p,
                test)  # fmt: skip


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
  """Holm's step-down adjustment (Holm 1979) for a family of tests; None entries stay None.

  The i-th smallest of m p-values becomes max_{j<=i} min(1, (m - j + 1) p_(j)); rejecting where
  the adjusted value is < alpha controls the family-wise error rate at alpha.
  """
  present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
  m = len(present)
  out: list[float | None] = [None] * len(pvalues)
  running = 0.0
  for rank, (p, i) in enumerate(sorted(present)):
    running = max(running, min(1.0, (m - rank) * p))
    out[i] = running
  return out


def verdict(difference: Paired | None, p_adjusted: float | None, mode: str) -> str:
  """'better' / 'worse' than the baseline at ALPHA (after correction), or why neither."""
  if difference is None:
    return "no shared seeds"
  if p_adjusted is None:
    return f"n = {difference.n}: no test"
  if p_adjusted >= ALPHA:
    return "no detectable difference"
  higher = difference.mean > 0
  return "better" if higher == (mode == "max") else "worse"


def paired_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
  """Power of a two-sided paired t-test with n pairs to detect a mean difference `effect` when
  the differences have standard deviation `sd` (noncentral t distribution)."""
  if n < 2:
    return 0.0
  df = n - 1
  critical = stats.t.ppf(1 - alpha / 2, df)
  nc = effect / sd * math.sqrt(n)
  # P(T > c) + P(T < -c); the lower tail as P(T' > c) for nc -> -nc (scipy's nct.cdf loses it
  # to NaN far from the centre)
  return float(stats.nct.sf(critical, df, nc) + stats.nct.sf(critical, df, -nc))


def seeds_needed(
  effect: float, sd: float, power: float = 0.8, alpha: float = ALPHA, limit: int = 1000
) -> int | None:
  """The smallest number of seeds (pairs) whose paired t-test reaches `power`; None past `limit`."""
  for n in range(2, limit + 1):
    if paired_power(effect, sd, n, alpha) >= power:
      return n
  return None
