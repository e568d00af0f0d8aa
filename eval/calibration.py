"""Post-hoc temperature scaling, fitted on the validation split.

One positive temperature T divides the logits: ``sigmoid(t_k / T)`` for the K threshold logits
of an ordinal head, ``softmax(z / T)`` for a categorical head. T is found by minimising the
validation NLL over ``log T`` (bounded, so T stays positive). For an ordinal head a single
shared T keeps the thresholds ordered: dividing by T > 0 preserves the order of the logits, and
the sigmoid is increasing, so ``t_1 >= … >= t_K`` gives ``q_1 >= … >= q_K`` after scaling as
before (and a non-monotone head stays exactly as non-monotone as it was). It also leaves every
AUROC unchanged, so scaling moves only the calibration figures.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import optimize, special

Kind = Literal["binary", "categorical"]

# Temperatures outside this range mean a broken head, not a calibration problem.
T_MIN, T_MAX = 0.05, 20.0


def scaled_probs(*, logits: np.ndarray, temperature: float, kind: Kind) -> np.ndarray:
    """Probabilities of temperature-scaled logits.

    Args:
        logits: ``(n, K)`` threshold logits (binary) or ``(n, C)`` class logits (categorical).
        temperature: T > 0.
        kind: ``"binary"`` (sigmoid per column) or ``"categorical"`` (softmax per row).

    Returns:
        float64 probabilities of the same shape.
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    return special.expit(z) if kind == "binary" else special.softmax(z, axis=1)


def scaled_nll(*, logits: np.ndarray, y: np.ndarray, temperature: float, kind: Kind) -> float:
    """Mean NLL at temperature T, computed from logits (no clamping needed).

    Binary: mean over rows and thresholds of ``softplus(-s t / T)`` with ``s = ±1``.
    Categorical: mean of ``logsumexp(z / T) - z_y / T`` (y an integer class).
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    if kind == "binary":
        sign = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
        return float(np.logaddexp(0.0, -sign * z).mean())
    picked = np.take_along_axis(z, np.asarray(y, dtype=np.int64)[:, None], axis=1)[:, 0]
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
