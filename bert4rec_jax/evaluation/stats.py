"""Uncertainty for comparing runs: a paired bootstrap over users (and runs), Student-t intervals.

`paired_bootstrap` is `compare`'s: both sides' per-user metrics on the same users, resampled
together (the pairing), so what every user finds easy or hard cancels out. A side with several
runs (seeds) has them resampled too, within the side: a seed that lifts every user at once is
then a source of uncertainty, not a difference between the sides (docs/evaluation_tools.md).
`t_interval` is `report`'s: a mean over seeds and its 95% Student-t half-width. Numpy and scipy
only (no JAX).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

# Elements gathered at once while resampling: bounds the temporaries to some tens of MB.
_BLOCK_ELEMENTS = 1 << 22
# Per-user differences at most this far from 0 count as "same" (means of equal values may
# differ in the last bit).
_SAME = 1e-12


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """B - A for one metric over paired users.

    Attributes:
      mean_a, mean_b: the metric's mean over users (and over each side's runs).
      difference: mean_b - mean_a.
      low, high: the bootstrap interval of the difference.
      p_value: two-sided, of the paired bootstrap test (no difference).
      better, worse, same: users whose metric (averaged over the side's runs) B raises, lowers,
        leaves as it was.
      num_users: users paired.
      resamples: bootstrap resamples drawn.
    """

    mean_a: float
    mean_b: float
    difference: float
    low: float
    high: float
    p_value: float
    better: int
    worse: int
    same: int
    num_users: int
    resamples: int


def _side_means(values: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[M, R]: each resample's mean of one side, over the resampled users and runs.

    Args:
      values: float64 [M metrics, S runs, n users].
      weights: float64 [R, n]; each resample's users, as the share of draws that took each.
      rng: draws the resampled runs (when S > 1).
    """
    metrics, runs, n = values.shape
    per_run = (values.reshape(metrics * runs, n) @ weights.T).reshape(metrics, runs, -1)
    if runs == 1:
        return per_run[:, 0]
    draws = rng.integers(0, runs, size=(weights.shape[0], runs))  # [R, S]
    weights = (draws[:, :, None] == np.arange(runs)).sum(axis=1) / runs  # [R, S]
    return np.einsum("msr,rs->mr", per_run, weights)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[PairedDifference]:
    """Paired differences B - A per metric, with percentile-bootstrap intervals and p-values.

    Each resample draws n users with replacement, the same for both sides, and, for a side with
    several runs, as many of its runs with replacement; its value is the difference of the two
    sides' means over what was drawn. The interval is the resamples' central `confidence` share;
    the p-value is that of the test this interval inverts (twice the share of resamples on the
    far side of 0, counted with a +1 so that it is never 0).

    Args:
      a, b: float [M, S_a, n] and [M, S_b, n] (or [S, n] for one metric): each metric of each
        run for the same n users, in the same order.
      resamples: bootstrap resamples.
      confidence: the interval's coverage.
      seed: the resampling's seed (the same seed gives the same interval).

    Returns:
      One `PairedDifference` per metric.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim == 2:
        a, b = a[None], b[None]
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ValueError(f"a {a.shape} and b {b.shape} must be [metrics, runs, users] alike")
    if a.shape[2] == 0 or a.shape[1] == 0 or b.shape[1] == 0:
        raise ValueError("nothing to compare: no users or no runs")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(
            f"resamples={resamples} must be positive, confidence={confidence} in (0, 1)"
        )
    num_metrics, _, n = a.shape
    rng = np.random.default_rng(seed)
    diffs = np.empty((num_metrics, resamples))
    block = max(1, _BLOCK_ELEMENTS // (n * num_metrics * max(a.shape[1], b.shape[1])))
    for start in range(0, resamples, block):
        count = min(block, resamples - start)
        users = rng.integers(0, n, size=(count, n)) + n * np.arange(count)[:, None]
        # A resample's mean is a weighted sum (weights: draws of each user / n): one matrix
        # product per side instead of gathering every drawn value.
        weights = np.bincount(users.reshape(-1), minlength=count * n).reshape(count, n) / n
        diffs[:, start : start + count] = _side_means(b, weights, rng) - _side_means(
            a, weights, rng
        )

    per_user = b.mean(axis=1) - a.mean(axis=1)  # [M, n]
    tail = (1 - confidence) / 2
    out = []
    for m in range(num_metrics):
        low, high = np.quantile(diffs[m], [tail, 1 - tail])
        below, above = int((diffs[m] <= 0).sum()), int((diffs[m] >= 0).sum())
        out.append(
            PairedDifference(
                mean_a=float(a[m].mean()),
                mean_b=float(b[m].mean()),
                difference=float(per_user[m].mean()),
                low=float(low),
                high=float(high),
                p_value=min(1.0, 2 * (min(below, above) + 1) / (resamples + 1)),
                better=int((per_user[m] > _SAME).sum()),
                worse=int((per_user[m] < -_SAME).sum()),
                same=int((np.abs(per_user[m]) <= _SAME).sum()),
                num_users=n,
                resamples=resamples,
            )
        )
    return out


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t interval of the mean); the half-width is NaN for fewer
    than two values."""
    from scipy import stats  # here: only `report` needs it

    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan
    t = float(stats.t.ppf(0.5 + confidence / 2, df=len(values) - 1))
    return mean, t * float(values.std(ddof=1)) / math.sqrt(len(values))
