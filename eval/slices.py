"""Slices of the test rows and per-slice tables (each row with its counts).

Three families of slices:

- ``phase``: early / mid / late by the state's step fraction (0-25-75-100 %).
- ``length``: episode-length tertiles, the edges taken over runs (each run counted once),
  so each tertile holds about a third of the runs, not of the rows.
- ``tile``: the highest tile on the board at that state, bucketed by the thresholds.

And the outcome table of threshold heads (:func:`outcome_table`): by each run's *final*
highest-tile bucket, the mean predicted ``P(highest >= T)`` against the actual rate, so a
reader sees for which outcomes a head under- or over-estimates each milestone.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

# (label, lo, hi): lo <= step_fraction < hi; "late" is closed at 1 (the last state)
PHASES = (
    ("early (0-25 %)", 0.0, 0.25),
    ("mid (25-75 %)", 0.25, 0.75),
    ("late (75-100 %)", 0.75, np.inf),
)

Reducer = Literal["mean", "root_mean"]


def phase_slices(step_fraction: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Early ``[0, .25)``, mid ``[.25, .75)``, late ``[.75, 1]`` by step fraction."""
    return [(name, (step_fraction >= lo) & (step_fraction < hi)) for name, lo, hi in PHASES]


def length_slices(run_id: np.ndarray, run_length: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Episode-length tertiles over runs: short ``<= a``, medium ``(a, b]``, long ``> b``."""
    _, first = np.unique(run_id, return_index=True)
    a, b = np.quantile(run_length[first], [1 / 3, 2 / 3])
    return [
        (f"short (<= {a:.0f} steps)", run_length <= a),
        (f"medium ({a:.0f}-{b:.0f})", (run_length > a) & (run_length <= b)),
        (f"long (> {b:.0f} steps)", run_length > b),
    ]


def bucket_names(thresholds: np.ndarray) -> list[str]:
    """Names of the K + 1 tile buckets: ``< T_1``, ``T_i`` (or ``T_i-T_{i+1}/2``), ``>= T_K``."""
    t = [int(x) for x in thresholds]
    names = [f"< {t[0]}"]
    names += [
        str(lo) if hi == 2 * lo else f"{lo}-{hi // 2}" for lo, hi in zip(t[:-1], t[1:], strict=True)
    ]
    return names + [f">= {t[-1]}"]


def tile_slices(max_tile: np.ndarray, thresholds: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Highest tile on the board, bucketed: ``< T_1``, ``[T_i, T_{i+1})`` …, ``>= T_K``."""
    bucket = np.searchsorted(np.asarray([int(x) for x in thresholds]), max_tile, side="right")
    return [(f"tile {name}", bucket == i) for i, name in enumerate(bucket_names(thresholds))]


def make_slices(
    *,
    step_fraction: np.ndarray,
    run_id: np.ndarray,
    run_length: np.ndarray,
    max_tile: np.ndarray,
    thresholds: np.ndarray,
) -> dict[str, list[tuple[str, np.ndarray]]]:
    """All slice families, name -> list of ``(label, row mask)``.

    Args:
        step_fraction: ``(n,)`` step index / run length of each state.
        run_id: ``(n,)`` run of each state.
        run_length: ``(n,)`` steps of that run.
        max_tile: ``(n,)`` highest tile value on the board (negative: unknown).
        thresholds: ``(K,)`` tile thresholds used for the tile buckets.

    Returns:
        ``{"phase": [...], "length": [...], "tile": [...]}``, without ``tile`` when the
        tiles are unknown.
    """
    out = {"phase": phase_slices(step_fraction), "length": length_slices(run_id, run_length)}
    if np.any(max_tile >= 0):
        out["tile"] = tile_slices(max_tile, thresholds)
    return out


def slice_table(
    slices: list[tuple[str, np.ndarray]],
    run_code: np.ndarray,
    values: dict[str, tuple[np.ndarray, Reducer]],
) -> list[dict]:
    """One row per slice: its label, row and run counts, and each metric over its rows.

    Args:
        slices: ``(label, mask)`` pairs from one slice family.
        run_code: ``(n,)`` dense run number (0..R-1) of each row, for the run counts.
        values: metric name -> (per-row values, ``"mean"``, or ``"root_mean"`` = the square root of their mean: RMSE from squared errors).

    Returns:
        Rows ``{"slice", "count", "runs", <metric>: value or None when the slice is empty}``.
    """
    rows = []
    for label, mask in slices:
        n = int(mask.sum())
        row: dict = {
            "slice": label,
            "count": n,
            "runs": int(np.count_nonzero(np.bincount(run_code[mask]))),
        }
        for name, (v, how) in values.items():
            m = float(np.mean(v[mask])) if n else None
            row[name] = None if m is None else (float(np.sqrt(m)) if how == "root_mean" else m)
        rows.append(row)
    return rows


def outcome_table(
    *, q: np.ndarray, y: np.ndarray, bucket: np.ndarray, run_code: np.ndarray, thresholds
) -> list[dict]:
    """By final outcome: each threshold's mean predicted probability against the actual rate.

    The rows are the K + 1 buckets of each state's run's final highest tile; within one, the
    actual rate of ``highest >= T_k`` is 1 for the thresholds the bucket reached and 0 for the
    others, so ``predicted - actual`` below 0 is an under-estimate of a milestone the runs did
    reach, above 0 an over-estimate of one they did not. Means are over the bucket's states.

    Args:
        q: ``(n, K)`` predicted ``P(highest >= T_k)``.
        y: ``(n, K)`` 0/1 whether the state's run reached ``T_k``.
        bucket: ``(n,)`` the run's final bucket, 0..K.
        run_code: ``(n,)`` dense run number (run counts).
        thresholds: ``(K,)`` tile values.

    Returns:
        One row per bucket, ``{"outcome", "count", "runs", "predicted": [K], "actual": [K],
        "bias": [K]}`` (lists of None for an empty bucket).
    """
    q, y = np.asarray(q, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rows = []
    for b, name in enumerate(bucket_names(thresholds)):
        mask = np.asarray(bucket) == b
        n = int(mask.sum())
        pred = q[mask].mean(axis=0).tolist() if n else [None] * q.shape[1]
        actual = y[mask].mean(axis=0).tolist() if n else [None] * q.shape[1]
        rows.append(
            {
                "outcome": name,
                "count": n,
                "runs": int(np.unique(run_code[mask]).size),
                "predicted": pred,
                "actual": actual,
                "bias": [None if a is None else p - a for p, a in zip(pred, actual, strict=True)],
            }
        )
    return rows
