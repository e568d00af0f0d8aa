"""The by-run intervals of a figure from its bootstrap replicates (:mod:`vh.eval.bootstrap`).

The plain percentile interval under-covers when runs are few, their effects skewed and their
lengths unequal (87-90 % for a nominal 95 % at 20 runs on the planted data of
``tests/test_bootstrap_coverage.py``; the studentized one 90-93 %). :func:`interval` therefore
reads the provenance that :class:`vh.eval.bootstrap.Replicates` carry (``terms``: the
``(coefficient, Stat)`` pairs, ``weights``: the ``(B, R)`` run multiplicities, ``point``) and
uses, in this order:

- the *studentized* (bootstrap-t) interval when every statistic has a linearised per-run
  influence (``Mean``, ``Rmse``, ``Auroc`` and their sums and differences): each replicate is
  divided by its own standard error ``sqrt(sum_r W[b, r] IF[b, r]^2)``;
- *BCa* otherwise (``Ece``, ``Pearson``, ``Spearman``): bias correction from the share of
  replicates below the point value, acceleration from the jackknife over runs (leave-one-run-out
  values are exact: the total sums minus one run's columns);
- the percentile interval for plain arrays (anything that lost its provenance).

Below :data:`MIN_RUNS_FOR_INTERVALS` test runs no method reaches its nominal level reliably.
This module only reads the replicates' attributes, so it imports nothing of the bootstrap.

Axes: R = runs, B = replicates.
"""

from __future__ import annotations

import numpy as np
from scipy import special

MIN_RUNS_FOR_INTERVALS = 20
"""Fewest test runs at which the by-run intervals are trusted to cover.

On skewed planted data (exponential run effects, geometric run lengths) the studentized
interval covers 92-96 % for a nominal 95 % for the mean and a paired difference, and 90-92 %
for AUROC, from 20 runs up (``tests/test_bootstrap_coverage.py``, 400 test sets per size);
below 20 runs a run-level bootstrap has too few units to know its tails, so a report should
call its intervals approximate and not declare winners on them.
"""


def interval(reps: np.ndarray, ci: float = 0.95) -> tuple[float, float]:
    """The by-run interval of a figure from its replicates (NaN, NaN when none is finite).

    Studentized when ``reps`` are :class:`vh.eval.bootstrap.Replicates` whose statistics all
    have influences, BCa when they are replicates otherwise, the percentile interval for plain
    arrays (see the module docstring)."""
    terms = getattr(reps, "terms", None)
    if terms:
        weights, point = reps.weights, reps.point
        if np.isfinite(point):
            infl = _influence(terms, weights)
            if infl is not None:
                out = _studentized(np.asarray(reps), point, infl, weights, ci)
            else:
                jack = sum(k * stat.jackknife() for k, stat in terms)
                out = _bca(np.asarray(reps), point, jack, ci)
            if all(np.isfinite(out)):
                return _within_replicates(out, reps)
    return percentile(reps, ci)


def _within_replicates(out: tuple[float, float], reps: np.ndarray) -> tuple[float, float]:
    """Clip an interval to the range of the finite replicates.

    Bootstrap-t divides by each resample's standard error; for a bounded figure that many
    runs get exactly right (top±1 accuracy near 1), some resamples have a standard error
    near 0, their t explodes, and the interval reaches far outside anything a resample ever
    produced (seen on the demo: top±1 0.95 with [-0.36, 1.01]). No resample supports a bound
    beyond the most extreme replicate, so the interval stops there (the coverage study in
    tests/test_bootstrap_coverage.py runs with this clip in place)."""
    r = np.asarray(reps, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return out
    lo, hi = float(r.min()), float(r.max())
    return float(np.clip(out[0], lo, hi)), float(np.clip(out[1], lo, hi))


def percentile(reps: np.ndarray, ci: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN, NaN when none is finite)."""
    r = np.asarray(reps, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(r, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return float(lo), float(hi)


def _influence(terms: tuple, weights: np.ndarray) -> np.ndarray | None:
    """``IF[b, r]`` of the linear combination (None when a statistic has no influence);
    row 0 is the full sample (all weights one), rows 1.. the replicates."""
    ones = np.ones((1, weights.shape[1]))
    w = np.concatenate([ones, weights])
    total = None
    for k, stat in terms:
        cols = stat.cols.astype(np.float64)
        infl = stat.influence(w @ cols)
        if infl is None:
            return None
        total = k * infl if total is None else total + k * infl
    return total


def _studentized(
    reps: np.ndarray, point: float, infl: np.ndarray, weights: np.ndarray, ci: float
) -> tuple[float, float]:
    """Bootstrap-t: quantiles of ``(theta_b - theta) / se_b`` scaled by the sample's se."""
    se = np.sqrt((infl[0] ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        se_b = np.sqrt((weights * infl[1:] ** 2).sum(1))
        t = (reps - point) / se_b
    t = t[np.isfinite(t)]
    if t.size == 0 or not se > 0:
        return float("nan"), float("nan")
    t_lo, t_hi = np.quantile(t, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return float(point - t_hi * se), float(point - t_lo * se)


def _bca(reps: np.ndarray, point: float, jack: np.ndarray, ci: float) -> tuple[float, float]:
    """Bias-corrected and accelerated percentile interval (Efron 1987); the acceleration is
    the skewness of the jackknife over runs."""
    r = reps[np.isfinite(reps)]
    jack = jack[np.isfinite(jack)]
    if r.size == 0 or jack.size < 2:
        return float("nan"), float("nan")
    below = (np.sum(r < point) + 0.5 * np.sum(r == point)) / r.size
    z0 = special.ndtri(np.clip(below, 1.0 / (r.size + 1), r.size / (r.size + 1.0)))
    d = jack.mean() - jack
    scale = 6.0 * float((d * d).sum()) ** 1.5
    acc = float((d**3).sum()) / scale if scale > 0 else 0.0
    z = special.ndtri(np.array([(1.0 - ci) / 2.0, (1.0 + ci) / 2.0]))
    alpha = special.ndtr(z0 + (z0 + z) / (1.0 - acc * (z0 + z)))
    lo, hi = np.quantile(r, alpha)
    return float(lo), float(hi)


def excludes_zero(lo: float, hi: float) -> bool:
    """Whether an interval of a difference lies strictly on one side of zero."""
    return bool(lo > 0.0 or hi < 0.0)
