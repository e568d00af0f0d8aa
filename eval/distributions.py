"""Scores of a predicted distribution over discrete atoms: CRPS and the randomised PIT.

Used for return heads (distributions over bins of h(return)); pure numpy, keyword-only,
per-example like :mod:`vh.eval.metrics`.
"""

from __future__ import annotations

import numpy as np


def crps_discrete(*, atoms: np.ndarray, p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact CRPS of discrete predictive distributions on shared atoms, per example.

    ``CRPS = ∫ (F(x) - 1{y <= x})^2 dx`` with ``F`` the step CDF of the atoms: 0 below
    ``a_0``, ``P_i = p_0 + … + p_i`` on ``[a_i, a_(i+1))``, 1 from ``a_(C-1)``. The integrand
    is constant between consecutive atoms except where ``y`` splits an interval, so each
    interval contributes ``below * P_i^2 + above * (1 - P_i)^2`` (its lengths under and over
    ``y``), plus the stretch between ``y`` and the atoms when ``y`` lies outside them.
    In the units of ``atoms`` and ``y``; equals the absolute error for a point mass.

    Args:
        atoms: ``(C,)`` increasing support points.
        p: ``(n, C)`` probabilities (rows summing to 1).
        y: ``(n,)`` observed values.

    Returns:
        float64 ``(n,)`` CRPS values.
    """
    a = np.asarray(atoms, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)[:, None]
    cdf = np.cumsum(np.asarray(p, dtype=np.float64), axis=1)[:, :-1]  # (n, C-1) F on [a_i, a_i+1)
    width = np.diff(a)[None, :]  # (1, C-1)
    above = np.clip(a[None, 1:] - np.maximum(a[None, :-1], y), 0.0, width)  # part with x >= y
    inner = ((width - above) * cdf**2 + above * (1.0 - cdf) ** 2).sum(axis=1)
    y = y[:, 0]
    return inner + np.maximum(a[0] - y, 0.0) + np.maximum(y - a[-1], 0.0)


def pit_randomized(*, p: np.ndarray, k: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Randomised probability integral transform of ordered discrete predictions.

    ``PIT = F(k - 1) + u * p_k`` for the observed class ``k`` and ``u ~ U(0, 1)``: uniform on
    [0, 1] exactly when the predictions are calibrated (the randomisation spreads the jump of a
    discrete CDF evenly, which the plain ``F(k)`` cannot).

    Args:
        p: ``(n, C)`` probabilities of ordered classes (bins).
        k: ``(n,)`` observed class of each example.
        u: ``(n,)`` uniform draws in [0, 1).

    Returns:
        float64 ``(n,)`` values in [0, 1].
    """
    p = np.asarray(p, dtype=np.float64)
    k = np.asarray(k, dtype=np.int64)[:, None]
    upto = np.take_along_axis(np.cumsum(p, axis=1), k, axis=1)[:, 0]  # F(k)
    pk = np.take_along_axis(p, k, axis=1)[:, 0]
    return np.clip(upto - pk + np.asarray(u, dtype=np.float64) * pk, 0.0, 1.0)


def pit_histogram(pit: np.ndarray, bins: int = 10) -> tuple[np.ndarray, float]:
    """Share of PIT values in each of ``bins`` equal bins of [0, 1] (1 in the last), and the
    largest deviation from uniform as a ratio: ``max_b |bins * share_b - 1|`` (0 = flat;
    0.5 = some bin holds half again, or half, of its uniform share)."""
    cell = np.clip((np.asarray(pit, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)
    share = np.bincount(cell, minlength=bins) / max(cell.size, 1)
    return share, float(np.max(np.abs(bins * share - 1.0)))
