"""Post-hoc temperature scaling, fitted on the validation split.

One positive temperature T divides the logits: ``sigmoid(t_k / T)`` for the K threshold logits
of an ordinal head, ``softmax(z / T)`` for a categorical head. T is found by minimising the
validation NLL over ``log T`` (bounded, so T stays positive). For an ordinal head a single
shared T keeps the thresholds ordered: dividing by T > 0 preserves the order of the logits, and
the sigmoid is increasing, so ``t_1 >= … >= t_K`` gives ``q_1 >= … >= q_K`` after scaling as
before (and a non-monotone head stays exactly as non-monotone as it was). It also leaves every
AUROC unchanged, so scaling moves only the calibration figures.

ECE bin conventions (:func:`vh.eval.metrics.ece`, ``sum_b |sum p_b - sum y_b| / W``):

- uniform (the report's ``ece@T``): bin ``b`` holds ``b / bins <= p < (b + 1) / bins``;
  exactly 1 falls in the last bin;
- equal-mass (``ece_mass``): inner edge ``b`` (b = 1..bins-1) is the first sorted probability
  whose cumulative weight *exceeds* ``b / bins`` of the total, and a row's bin is the number
  of inner edges at or below its probability. Tied probabilities therefore always share a
  bin, so bins hold only about equal mass and some may be empty (a head with 3 distinct
  values has at most 3 non-empty bins). ``tests/test_metrics.py`` checks this rule against a
  loop.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import optimize, special

Kind = Literal["binary", "categorical"]

# Temperatures outside this range mean a broken head, not a calibration problem.
T_MIN, T_MAX = 0.05, 20.0


def _picked(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``z_y`` per row: the logit of an integer class ``(n,)``, or the soft labels' mean
    logit ``sum_c y_c z_c`` for ``(n, C)`` soft labels summing to 1 (a log-score head scored
    as trained), so ``logsumexp(z) - picked`` is the cross-entropy either way."""
    y = np.asarray(y)
    if y.ndim == 2:
        return np.einsum("nc,nc->n", y.astype(np.float64), z)
    return np.take_along_axis(z, y.astype(np.int64)[:, None], axis=1)[:, 0]


def scaled_nll(*, logits: np.ndarray, y: np.ndarray, temperature: float, kind: Kind) -> float:
    """Mean NLL at temperature T, computed from logits (no clamping needed).

    Binary: mean over rows and thresholds of ``softplus(-s t / T)`` with ``s = ±1``.
    Categorical: mean of ``logsumexp(z / T) - z_y / T`` (y an integer class).
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    if kind == "binary":
        sign = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
        return float(np.logaddexp(0.0, -sign * z).mean())
    picked = _picked(z, y)
    return float((special.logsumexp(z, axis=1) - picked).mean())


def fit_temperature(
    *, logits: np.ndarray, y: np.ndarray, kind: Kind, max_rows: int = 1_000_000, seed: int = 0
) -> float:
    """The temperature minimising the NLL of ``(logits, y)``.

    Args:
        logits: validation logits, ``(n, K)`` or ``(n, C)``.
        y: validation labels: ``(n, K)`` 0/1 (binary) or ``(n,)`` classes (categorical).
        kind: ``"binary"`` or ``"categorical"``.
        max_rows: beyond this many rows, fit on a seeded random subset (one scalar needs no
            more, and each NLL evaluation is a pass over the rows).
        seed: seed of that subset.

    Returns:
        T in ``[T_MIN, T_MAX]``.
    """
    if logits.shape[0] > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(logits.shape[0], max_rows, replace=False))
        logits, y = logits[keep], np.asarray(y)[keep]

    def loss(log_t: float) -> float:
        return scaled_nll(logits=logits, y=y, temperature=float(np.exp(log_t)), kind=kind)

    res = optimize.minimize_scalar(
        loss, bounds=(np.log(T_MIN), np.log(T_MAX)), method="bounded", options={"xatol": 1e-5}
    )
    return float(np.exp(res.x))


# --------------------------------------------------------------------------- T's interval

# Resamples refit T on a grid of beta = 1 / T: the NLL is convex in beta (a logistic or
# softmax loss of logits scaled by beta), so the grid minimum, refined by a parabola through
# its neighbours, is the refit's minimum. Steps of 0.05 in log(beta) span [T_MIN, T_MAX].
_GRID = np.exp(np.arange(np.log(1 / T_MAX), np.log(1 / T_MIN) + 1e-9, 0.05))
_INTERVAL_ROWS = 200_000  # rows the grid pass reads (a seeded subset beyond; runs kept whole)


def row_nll(*, logits: np.ndarray, y: np.ndarray, temperature: float, kind: Kind) -> np.ndarray:
    """Per-row NLL at temperature T: ``(n,)`` (binary: the mean over the K thresholds), so
    that :func:`scaled_nll` is its mean."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if kind == "binary":
        sign = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
        return np.logaddexp(0.0, -sign * z).mean(axis=1)
    picked = _picked(z, y)
    return special.logsumexp(z, axis=1) - picked


def _grid_argmin(nll: np.ndarray) -> np.ndarray:
    """``(B,)`` minimising beta of each row of ``nll`` ``(B, G)`` over :data:`_GRID`."""
    g = np.log(_GRID)
    i = np.clip(np.argmin(nll, axis=1), 1, g.size - 2)
    rows = np.arange(nll.shape[0])
    a, b, c = nll[rows, i - 1], nll[rows, i], nll[rows, i + 1]
    den = a - 2.0 * b + c
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where(den > 0, 0.5 * (a - c) / den, 0.0)  # vertex of the parabola, in steps
    step = g[1] - g[0]
    return np.exp(np.clip(g[i] + np.clip(shift, -1.0, 1.0) * step, g[0], g[-1]))


def temperature_replicates(
    *,
    logits: np.ndarray,
    y: np.ndarray,
    kind: Kind,
    run_id: np.ndarray,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """T refitted on ``n_boot`` resamples of the validation *runs* (with replacement).

    Each run's NLL is summed once per grid temperature; a resample's NLL curve is then one
    product of its run multiplicities with those sums (:func:`vh.eval.bootstrap.draw_weights`).

    Returns:
        ``(n_boot,)`` temperatures in ``[T_MIN, T_MAX]``.
    """
    from vh.eval import bootstrap as B

    run_id = np.asarray(run_id)
    if logits.shape[0] > _INTERVAL_ROWS:  # whole runs, so the resampling unit stays a run
        runs = np.unique(run_id)
        rng = np.random.default_rng(seed)
        keep_runs = rng.permutation(runs)[: max(1, int(runs.size * _INTERVAL_ROWS / run_id.size))]
        keep = np.isin(run_id, keep_runs)
        logits, y, run_id = logits[keep], np.asarray(y)[keep], run_id[keep]
    index = B.run_index(run_id)
    per_run = np.stack(
        [
            index.sums(row_nll(logits=logits, y=y, temperature=1.0 / b, kind=kind))[:, 0]
            for b in _GRID
        ],
        axis=1,
    )  # (R, G)
    rows = index.sums(None)[:, 0]  # (R,)
    w = B.draw_weights(n_runs=index.n_runs, n_boot=n_boot, seed=seed)
    nll = (w @ per_run) / (w @ rows)[:, None]  # (B, G) mean NLL of each resample
    return 1.0 / _grid_argmin(nll)


def recommend_temperature(
    *,
    logits: np.ndarray,
    y: np.ndarray,
    kind: Kind,
    run_id: np.ndarray | None,
    n_boot: int,
    seed: int,
    ci: float,
) -> dict:
    """Fit T on validation, its by-run interval, and whether to use it.

    T is recommended only when its interval excludes 1 *and* it lowers the validation NLL;
    otherwise scaling does not help (a T whose interval includes 1 is as likely noise, or an
    outcome mix of the validation runs that differs from the others, as a real miscalibration).

    Args:
        logits, y: validation logits and labels (as :func:`fit_temperature`).
        kind: ``"binary"`` or ``"categorical"``.
        run_id: ``(m,)`` validation run of each row (None: no interval, never recommended).
        n_boot, seed, ci: resamples, their seed, the interval's level.

    Returns:
        ``{"T", "lo", "hi", "val_runs", "val_nll_before", "val_nll_after", "recommended",
        "why"}``.
    """
    from vh.eval import bootstrap as B

    t = fit_temperature(logits=logits, y=y, kind=kind, seed=seed)
    before = scaled_nll(logits=logits, y=y, temperature=1.0, kind=kind)
    after = scaled_nll(logits=logits, y=y, temperature=t, kind=kind)
    lo = hi = float("nan")
    runs = 0
    if run_id is not None:
        runs = int(np.unique(run_id).size)
        reps = temperature_replicates(
            logits=logits, y=y, kind=kind, run_id=run_id, n_boot=n_boot, seed=seed
        )
        lo, hi = B.interval(reps, ci)
    excludes_one = bool(lo > 1.0 or hi < 1.0)
    lowers = bool(after < before)
    if run_id is None:
        why = "the validation runs are not recorded, so T has no interval"
    elif not excludes_one:
        why = f"its interval [{lo:.3f}, {hi:.3f}] includes 1"
    elif not lowers:
        why = "it does not lower the validation NLL"
    else:
        why = f"its interval [{lo:.3f}, {hi:.3f}] excludes 1 and it lowers the validation NLL"
    return {
        "T": t,
        "lo": lo,
        "hi": hi,
        "val_runs": runs,
        "val_nll_before": before,
        "val_nll_after": after,
        "recommended": excludes_one and lowers and run_id is not None,
        "why": why,
    }
