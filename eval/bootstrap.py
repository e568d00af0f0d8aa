"""Bootstrap confidence intervals resampled by run (the unit of independence).

A resample draws runs with replacement: run r appears ``W[b, r]`` times in replicate b. Every
row of run r then has weight ``W[b, r]``, so a replicate is a *weighted* metric and nothing is
re-sorted. Each statistic reduces its rows once to per-run sufficient statistics, an
``(R, c)`` matrix; all replicates of all statistics then come from one matrix product
``W @ columns`` (B, c), finished per statistic. 1000 replicates of 5M rows cost a few GEMMs.

Statistics and what their replicates are:

- :class:`Mean` (NLL, Brier, accuracies, MAE), :class:`Rmse`: exact.
- :class:`Ece`: exact for fixed bins (equal-mass bins are those of the full sample).
- :class:`Pearson`: exact.
- :class:`Spearman`: Pearson of the full-sample midranks, the usual rank-then-resample
  approximation (re-ranking each replicate would need a pass over the rows per replicate).
- :class:`Auroc`: scores quantised to ``n_bins`` equal-mass levels from the one sort of the
  full sample (pairs inside a level count one half); each replicate is shifted by the
  full-sample difference between the exact and the quantised AUROC (about 1e-6 at the default
  512 levels on planted data). Level counts are integers, kept in float32.

Axes: n = rows, R = runs, B = replicates, c = sufficient-statistic columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vh.eval import metrics as M

# One (R, c) block times W (B, R) is computed at a time; this bounds the block's memory.
_BLOCK_BYTES = 256 * 2**20


# --------------------------------------------------------------------------- runs and draws


@dataclass(frozen=True)
class RunIndex:
    """Rows grouped by run: ``code[i]`` is the dense run number (0..R-1) of row i."""

    code: np.ndarray
    ids: np.ndarray

    @property
    def n_runs(self) -> int:
        return int(self.ids.shape[0])

    def sums(self, *values: np.ndarray | None) -> np.ndarray:
        """Per-run sums of each ``(n,)`` array (None: the row counts), shape ``(R, len)``."""
        return np.stack([np.bincount(self.code, v, self.n_runs) for v in values], axis=1)

    def binned(self, bins: np.ndarray, n_bins: int, *values: np.ndarray | None) -> list:
        """Per-run, per-bin sums of each ``(n,)`` array (None: counts), each ``(R, n_bins)``."""
        flat = self.code * n_bins + bins  # (n,) cell of (run, bin), computed once
        size = self.n_runs * n_bins
        return [np.bincount(flat, v, size).reshape(self.n_runs, n_bins) for v in values]


def run_index(run_id: np.ndarray) -> RunIndex:
    """Index rows by their run id."""
    ids, code = np.unique(np.asarray(run_id), return_inverse=True)
    return RunIndex(code=code.astype(np.int64).ravel(), ids=ids)


def draw_weights(*, n_runs: int, n_boot: int, seed: int) -> np.ndarray:
    """Run multiplicities of ``n_boot`` resamples of ``n_runs`` runs with replacement.

    Each row of the result is one multinomial draw (R draws, equal probabilities), made as R
    uniform run picks counted with one bincount.

    Returns:
        float64 ``(B, R)``, each row summing to R.
    """
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_runs, size=(n_boot, n_runs))
    offsets = np.arange(n_boot)[:, None] * n_runs
    counts = np.bincount((picks + offsets).ravel(), minlength=n_boot * n_runs)
    return counts.reshape(n_boot, n_runs).astype(np.float64)


# --------------------------------------------------------------------------- statistics


class Stat:
    """A statistic with a point value and per-run sufficient statistics.

    Subclasses set ``point`` (the full-sample value) and ``cols`` (``(R, c)``) and implement
    :meth:`finish`, which turns weighted sums ``(B, c)`` into replicates ``(B,)``.
    """

    point: float
    cols: np.ndarray

    def finish(self, sums: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Mean(Stat):
    """Weighted mean of per-row values (NLL, Brier, accuracy, absolute error …)."""

    def __init__(self, index: RunIndex, values: np.ndarray):
        v = np.asarray(values, dtype=np.float64)
        self.point = float(v.mean())
        self.cols = index.sums(v, None)  # (R, 2): sum of the values, rows

    def finish(self, sums: np.ndarray) -> np.ndarray:
        return _ratio(sums[:, 0], sums[:, 1])


class Rmse(Mean):
    """Root of the weighted mean of squared errors."""

    def __init__(self, index: RunIndex, errors: np.ndarray):
        super().__init__(index, np.asarray(errors, dtype=np.float64) ** 2)
        self.point = float(np.sqrt(self.point))

    def finish(self, sums: np.ndarray) -> np.ndarray:
        return np.sqrt(super().finish(sums))


class Ece(Stat):
    """Expected calibration error on fixed bins (equal-mass bins: those of the full sample)."""

    def __init__(
        self, index: RunIndex, p: np.ndarray, y: np.ndarray, bins: np.ndarray, n_bins: int
    ):
        """``bins``: ``(n,)`` calibration bin of each row (``metrics.calibration_bins``)."""
        count, sum_p, sum_y = index.binned(bins, n_bins, None, p, np.asarray(y, np.float64))
        gap = sum_p - sum_y
        self.cols = np.concatenate([count, gap], axis=1)  # (R, 2 n_bins)
        self.nb = n_bins
        self.point = float(np.abs(gap.sum(0)).sum() / count.sum())

    def finish(self, sums: np.ndarray) -> np.ndarray:
        return _ratio(np.abs(sums[:, self.nb :]).sum(1), sums[:, : self.nb].sum(1))


class Auroc(Stat):
    """AUROC with scores quantised to equal-mass levels (see the module docstring)."""

    def __init__(
        self,
        index: RunIndex,
        score: np.ndarray,
        y: np.ndarray,
        order: np.ndarray | None = None,
        n_bins: int = 512,
    ):
        order = np.argsort(score) if order is None else order
        level = M.levels(score, n_bins, order=order)
        count, pos = index.binned(level, n_bins, None, np.asarray(y, np.float64))
        # (R, 2 n_bins): positives, negatives per level. Integer counts: exact in float32
        self.cols = np.concatenate([pos, count - pos], axis=1).astype(np.float32)
        self.nb = n_bins
        self.point = M.auroc(score=score, y=y, order=order)
        self.offset = self.point - float(self._binned(self.cols.sum(0, keepdims=True))[0])

    def _binned(self, sums: np.ndarray) -> np.ndarray:
        sums = sums.astype(np.float64)
        pos, neg = sums[:, : self.nb], sums[:, self.nb :]
        below = np.cumsum(neg, axis=1) - neg
        num = (pos * (below + 0.5 * neg)).sum(1)
        return _ratio(num, pos.sum(1) * neg.sum(1))

    def finish(self, sums: np.ndarray) -> np.ndarray:
        return self._binned(sums) + self.offset


class Pearson(Stat):
    """Pearson correlation from per-run moments (rows centred on the full-sample means)."""

    def __init__(self, index: RunIndex, x: np.ndarray, y: np.ndarray):
        dx = np.asarray(x, dtype=np.float64) - np.mean(x)
        dy = np.asarray(y, dtype=np.float64) - np.mean(y)
        self.cols = index.sums(None, dx, dy, dx * dx, dy * dy, dx * dy)  # (R, 6) moments
        self.point = self._corr(self.cols.sum(0, keepdims=True))[0]

    @staticmethod
    def _corr(s: np.ndarray) -> np.ndarray:
        n, sx, sy, sxx, syy, sxy = (s[:, j] for j in range(6))
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = sxy - sx * sy / n
            return cov / np.sqrt((sxx - sx * sx / n) * (syy - sy * sy / n))

    def finish(self, sums: np.ndarray) -> np.ndarray:
        return self._corr(sums)


class Spearman(Pearson):
    """Spearman correlation: Pearson of full-sample midranks."""

    def __init__(
        self,
        index: RunIndex,
        x: np.ndarray,
        y: np.ndarray,
        x_order: np.ndarray | None = None,
        y_order: np.ndarray | None = None,
    ):
        super().__init__(
            index,
            M.midranks(np.asarray(x), order=x_order),
            M.midranks(np.asarray(y), order=y_order),
        )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# --------------------------------------------------------------------------- replicates


def _blocks(stats: dict[str, Stat], n_runs: int):
    """Statistic names grouped into products: one column dtype per block, each block's
    columns at most ``_BLOCK_BYTES``."""
    block: list[str] = []
    width = 0
    for k in sorted(stats, key=lambda k: stats[k].cols.dtype != np.float32):
        cols = stats[k].cols
        too_wide = (width + cols.shape[1]) * n_runs * 8 > _BLOCK_BYTES
        if block and (cols.dtype != stats[block[0]].cols.dtype or too_wide):
            yield block
            block, width = [], 0
        block.append(k)
        width += cols.shape[1]
    if block:
        yield block


def replicate(stats: dict[str, Stat], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Replicates of every statistic under the same resamples.

    Columns of several statistics are stacked into blocks and each block is one product
    ``weights @ block``; float32 columns (integer counts, exact below 2^24) take a float32
    product, twice as fast.

    Args:
        stats: name -> statistic (all built on the same :class:`RunIndex`).
        weights: ``(B, R)`` run multiplicities from :func:`draw_weights`.

    Returns:
        name -> ``(B,)`` replicate values (NaN where undefined, e.g. one class only).
    """
    out: dict[str, np.ndarray] = {}
    w32 = None
    for block in _blocks(stats, weights.shape[1]):
        if stats[block[0]].cols.dtype == np.float32:
            w32 = weights.astype(np.float32) if w32 is None else w32
            w = w32
        else:
            w = weights
        sums = w @ np.concatenate([stats[k].cols for k in block], axis=1)  # (B, width)
        start = 0
        for k in block:
            c = stats[k].cols.shape[1]
            out[k] = stats[k].finish(sums[:, start : start + c])
            start += c
    return out


def interval(reps: np.ndarray, ci: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN, NaN when none is finite)."""
    r = np.asarray(reps, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(r, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return float(lo), float(hi)


def excludes_zero(lo: float, hi: float) -> bool:
    """Whether an interval of a difference lies strictly on one side of zero."""
    return bool(lo > 0.0 or hi < 0.0)
