"""Planted predictions whose truth is known.

:func:`planted` makes row-aligned threshold-head predictions from a latent skill per run, so
tests can check that the report names the better head; ``vh bench eval``
(:mod:`vh.bench.eval`) times the scoring and the report pages on them.
"""

from __future__ import annotations

import numpy as np

from vh.eval import metrics as M
from vh.eval.labels import class_labels
from vh.eval.predictions import Predictions

PLANTED_THRESHOLDS = (1024, 2048, 4096, 8192, 16384, 32768)
_CUTS = np.linspace(-3.0, 3.0, len(PLANTED_THRESHOLDS))  # c_k of the planted truth


def _planted_states(rng: np.random.Generator, n_rows: int, n_runs: int, first_id: int) -> dict:
    """Runs with a latent skill z, their outcomes, and their states sorted by (run, step)."""
    z = rng.normal(size=n_runs)
    reach = 1 / (1 + np.exp(-(2.0 * z[:, None] - _CUTS)))  # (R, K) P(highest >= T_k | z)
    bucket = (rng.uniform(size=(n_runs, 1)) < reach).sum(1)  # ordinal draw: one uniform per run
    tiles = np.r_[512, PLANTED_THRESHOLDS][bucket]
    score = np.round(np.exp(7.0 + 0.8 * bucket + 0.3 * rng.normal(size=n_runs)))
    sizes = 1 + rng.multinomial(n_rows - n_runs, rng.dirichlet(np.full(n_runs, 4.0)))
    run = np.repeat(np.arange(n_runs), sizes)  # (n,) run of each state
    step = np.arange(n_rows) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    frac = step / sizes[run]
    exps = np.clip(np.floor(frac * np.log2(tiles[run])) + 1, 1, np.log2(tiles[run]))
    return {
        "z": z[run],
        "bucket": bucket[run],
        "rows": {
            "run_id": (run + first_id).astype(np.int64),
            "step_index": step.astype(np.int64),
            "step_fraction": frac,
            "run_length": sizes[run].astype(np.int64),
            "max_tile": (2**exps).astype(np.int64),
            "highest_tile": tiles[run].astype(np.int64),
            "final_score": score[run],
        },
    }


def _planted_logits(kind: str, z: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A head that sees the skill through noise: threshold logits ``2 z_hat - c_k``."""
    t = 2.0 * (z + noise * rng.normal(size=z.size))[:, None] - _CUTS  # (n, K)
    if kind == "ordinal":
        return t
    return np.log(M.clamp(M.buckets_from_q(1 / (1 + np.exp(-t)))))  # tiles: log bucket probs


def planted(
    *,
    n_rows: int,
    n_runs: int,
    heads: dict[str, tuple[str, float, int]],
    seed: int = 0,
    val_rows: int | None = None,
) -> list[Predictions]:
    """Synthetic threshold-head predictions whose truth is known.

    Each run has a latent skill z ~ N(0, 1) and reaches ``T_k`` with probability
    ``sigmoid(2 z - c_k)`` (one uniform draw per run, so buckets are ordinal). A head sees z
    through noise, per state: ``z_hat = z + noise * eps``; less noise is a better head on every
    figure, and two heads with the same (kind, noise, seed) are identical.

    Args:
        n_rows, n_runs: test states and runs (every run has at least one state).
        heads: name -> (``"ordinal"`` or ``"tiles"``, noise, noise seed).
        seed: seed of the runs and outcomes.
        val_rows: validation states (default a tenth of ``n_rows``), for the temperature.

    Returns:
        Row-aligned :class:`~vh.eval.predictions.Predictions`, one per head.
    """
    rng = np.random.default_rng(seed)
    test = _planted_states(rng, n_rows, n_runs, first_id=10)
    m = val_rows if val_rows is not None else max(n_rows // 10, 1)
    val = _planted_states(rng, m, max(n_runs * m // n_rows, 1), first_id=10 + n_runs)
    medians = np.exp(7.0 + 0.8 * np.arange(len(PLANTED_THRESHOLDS) + 1))  # lognormal medians
    preds = []
    for name, (kind, noise, head_seed) in heads.items():
        hrng = np.random.default_rng([seed, head_seed])
        preds.append(
            Predictions(
                name=name,
                kind=kind,
                thresholds=np.array(PLANTED_THRESHOLDS),
                medians=medians,
                rows=test["rows"],
                out={
                    "logits": _planted_logits(kind, test["z"], noise, hrng),
                    "val_logits": _planted_logits(kind, val["z"], noise, hrng),
                    "val_y": class_labels(
                        kind,
                        thresholds=np.array(PLANTED_THRESHOLDS),
                        highest_tile=val["rows"]["highest_tile"],
                        final_score=val["rows"]["final_score"],
                    ),
                },
                meta={"arch": "planted", "monotone": kind == "ordinal", "noise": noise},
            )
        )
    return preds
