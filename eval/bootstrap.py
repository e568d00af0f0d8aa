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

Intervals: :func:`replicate` returns :class:`Replicates`, arrays that remember the statistics
and resamples they came from, so that :func:`vh.eval.intervals.interval` (importable from here)
can studentize them (``Stat.influence``) or fall back to BCa (``Stat.jackknife``).

Axes: n = rows, R = runs, B = replicates, c = sufficient-statistic columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vh.eval import metrics as M

# the interval methods live in vh.eval.intervals; callers keep using B.interval and friends
from vh.eval.intervals import MIN_RUNS_FOR_INTERVALS as MIN_RUNS_FOR_INTERVALS
from vh.eval.intervals import excludes_zero as excludes_zero
from vh.eval.intervals import interval as interval
from vh.eval.intervals import percentile as percentile

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

    def influence(self, sums: np.ndarray) -> np.ndarray | None:
        """Linearised influence ``IF[b, r]`` of run r on replicate b, from the replicate's
        weighted sums ``(B, c)``; its variance is ``sum_r W[b, r] IF[b, r]^2``. None when the
        statistic has none (intervals then use BCa)."""
        return None

    def jackknife(self) -> np.ndarray:
        """Leave-one-run-out values ``(R,)``: exact, the total sums minus one run's columns."""
        total = self.cols.sum(0, keepdims=True, dtype=np.float64)
        return self.finish(total - self.cols.astype(np.float64))


class Mean(Stat):
    """Weighted mean of per-row values (NLL, Brier, accuracy, absolute error …)."""

    def __init__(self, index: RunIndex, values: np.ndarray):
        v = np.asarray(values, dtype=np.float64)
        self.point = float(v.mean())
        self.cols = index.sums(v, None)  # (R, 2): sum of the values, rows

    def finish(self, sums: np.ndarray) -> np.ndarray:
        return _ratio(sums[:, 0], sums[:, 1])

    def influence(self, sums: np.ndarray) -> np.ndarray:
        """Ratio estimator: ``(s_r - mean_b n_r) / N_b`` (s_r, n_r: run r's sum and rows)."""
        mean = _ratio(sums[:, 0], sums[:, 1])[:, None]  # (B, 1)
        return (self.cols[None, :, 0] - mean * self.cols[None, :, 1]) / sums[:, 1:2]


class Rmse(Mean):
    """Root of the weighted mean of squared errors."""

    def __init__(self, index: RunIndex, errors: np.ndarray):
        super().__init__(index, np.asarray(errors, dtype=np.float64) ** 2)
        self.point = float(np.sqrt(self.point))

    def finish(self, sums: np.ndarray) -> np.ndarray:
        return np.sqrt(super().finish(sums))

    def influence(self, sums: np.ndarray) -> np.ndarray:
        """Chain rule through the square root."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return super().influence(sums) / (2.0 * self.finish(sums)[:, None])


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

    def influence(self, sums: np.ndarray) -> np.ndarray:
        """Clustered AUROC (DeLong placements summed per run): run r contributes
        ``sum_{i in pos_r} (F(i) - A) / P + sum_{j in neg_r} (G(j) - A) / N``, F the share of
        negatives below a positive, G the share of positives above a negative (ties 1/2)."""
        sums = sums.astype(np.float64)
        pos, neg = sums[:, : self.nb], sums[:, self.nb :]  # (B, nb) each
        n_pos, n_neg = pos.sum(1, keepdims=True), neg.sum(1, keepdims=True)
        a = self._binned(sums)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            f = (np.cumsum(neg, axis=1) - 0.5 * neg) / n_neg - a  # (B, nb)
            g = (n_pos - np.cumsum(pos, axis=1) + 0.5 * pos) / n_pos - a
            run_pos = self.cols[:, : self.nb].astype(np.float64)  # (R, nb)
            run_neg = self.cols[:, self.nb :].astype(np.float64)
            return (f @ run_pos.T) / n_pos + (g @ run_neg.T) / n_neg  # (B, R)


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


class Replicates(np.ndarray):
    """``(B,)`` replicate values that remember their provenance: ``terms``, a tuple of
    ``(coefficient, Stat)``, and the ``weights`` ``(B, R)`` that made them.

    Sums, differences, negation and scaling by a number keep the provenance (a paired
    difference ``a - b`` is the statistic ``1 a + (-1) b`` under the same resamples); any other
    operation, a slice or a reduction gives a plain array, whose interval is the percentile one.
    """

    terms: tuple | None = None
    weights: np.ndarray | None = None
    point: float = float("nan")  # the full-sample value, by the same arithmetic as the values

    def __array_finalize__(self, obj) -> None:
        # views and slices lose the provenance: they no longer line up with the weights
        self.terms = None
        self.weights = None
        self.point = float("nan")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [np.asarray(x) if isinstance(x, Replicates) else x for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(o) for o in kwargs["out"])
        out = getattr(ufunc, method)(*plain, **kwargs)
        terms = _combine(ufunc, inputs) if method == "__call__" and "out" not in kwargs else None
        if terms is None or not isinstance(out, np.ndarray):
            return out
        # the point value by the same operations in the same order as the replicates, so
        # that e.g. two identical heads give exactly 0 for both
        point = ufunc(*[x.point if isinstance(x, Replicates) else x for x in inputs])
        return _wrap(out, terms, _weights_of(inputs), float(point))


def _weights_of(inputs) -> np.ndarray:
    return next(x.weights for x in inputs if isinstance(x, Replicates) and x.terms)


def _wrap(values: np.ndarray, terms: tuple, weights: np.ndarray, point: float) -> Replicates:
    out = np.asarray(values).view(Replicates)
    out.terms, out.weights, out.point = terms, weights, point
    return out


def _scaled(terms: tuple, c: float) -> tuple:
    return tuple((c * k, stat) for k, stat in terms)


def _combine(ufunc, inputs) -> tuple | None:
    """Terms of ``ufunc(*inputs)`` when it is linear in tracked replicates, else None."""
    tracked = [isinstance(x, Replicates) and x.terms is not None for x in inputs]
    scalar = [np.ndim(x) == 0 and not isinstance(x, np.ndarray | Replicates) for x in inputs]
    if ufunc is np.negative and tracked == [True]:
        return _scaled(inputs[0].terms, -1.0)
    if len(inputs) != 2:
        return None
    a, b = inputs
    if ufunc in (np.add, np.subtract) and all(tracked):
        if a.weights is not b.weights and not np.array_equal(a.weights, b.weights):
            return None  # different resamples: not a paired statistic
        return a.terms + _scaled(b.terms, 1.0 if ufunc is np.add else -1.0)
    if ufunc is np.multiply and tracked[0] and scalar[1]:
        return _scaled(a.terms, float(b))
    if ufunc is np.multiply and scalar[0] and tracked[1]:
        return _scaled(b.terms, float(a))
    if ufunc is np.true_divide and tracked[0] and scalar[1]:
        return _scaled(a.terms, 1.0 / float(b))
    return None


def replicate(stats: dict[str, Stat], weights: np.ndarray, progress=None) -> dict[str, Replicates]:
    """Replicates of every statistic under the same resamples.

    Columns of several statistics are stacked into blocks and each block is one product
    ``weights @ block``; float32 columns (integer counts, exact below 2^24) take a float32
    product, twice as fast.

    Args:
        stats: name -> statistic (all built on the same :class:`RunIndex`).
        weights: ``(B, R)`` run multiplicities from :func:`draw_weights`.
        progress: optional :class:`vh.progress.Progress`, told the statistics done per block.

    Returns:
        name -> ``(B,)`` replicate values (NaN where undefined, e.g. one class only), as
        :class:`Replicates` so that :func:`interval` can studentize them.
    """
    out: dict[str, Replicates] = {}
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
            reps = stats[k].finish(sums[:, start : start + c])
            out[k] = _wrap(reps, ((1.0, stats[k]),), weights, float(stats[k].point))
            start += c
        if progress is not None:
            progress.update(len(block))
    return out


def average(reps: list[np.ndarray]) -> np.ndarray:
    """Element-wise mean of replicate arrays, keeping their provenance (a composite figure)."""
    total = reps[0]
    for r in reps[1:]:
        total = total + r
    return total / len(reps)
