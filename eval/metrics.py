"""Pure metrics for probabilistic value heads.

Every function is keyword-only and takes optional per-example ``weights``. Integer weights are
the same as repeating rows, which is what makes a bootstrap replicate a weighted metric (see
:mod:`vh.eval.bootstrap`). Functions that sort accept a precomputed ``order`` (an argsort of the
scores) so one sort serves every metric and every replicate. Probabilities are clamped to
``[EPS, 1 - EPS]`` before logs.

Axes: n = examples, K = thresholds ``T_1 < … < T_K`` (tile values), C = classes (the K + 1
buckets of the highest tile, or the bins of a distributional head), b = calibration bins.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

EPS = 1e-12


# --------------------------------------------------------------------------- basics


def clamp(p: np.ndarray) -> np.ndarray:
    """Probabilities clipped to ``[EPS, 1 - EPS]`` (so logs stay finite)."""
    return np.clip(p, EPS, 1.0 - EPS)


def weighted_mean(x: np.ndarray, *, weights: np.ndarray | None = None) -> np.ndarray | float:
    """Mean over axis 0, weighted when ``weights`` (n,) is given.

    Args:
        x: ``(n, ...)`` values.
        weights: optional non-negative ``(n,)`` weights.

    Returns:
        A float for 1-D ``x``, else an array of shape ``x.shape[1:]``.
    """
    x = np.asarray(x, dtype=np.float64)
    if weights is None:
        return x.mean(axis=0)
    w = np.asarray(weights, dtype=np.float64)
    return np.tensordot(w, x, axes=(0, 0)) / w.sum()


def _weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    return np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)


def _sorted_weights(weights: np.ndarray | None, order: np.ndarray) -> np.ndarray:
    """Weights in sorted order (ones without a gather when unweighted)."""
    return np.ones(order.shape[0]) if weights is None else np.asarray(weights, np.float64)[order]


def _class_sums(g: np.ndarray, pos: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weight of positives and of negatives in each group ``g``."""
    total = np.bincount(g, w)
    gp = np.bincount(g, w * pos)
    return gp, total - gp


# --------------------------------------------------------------------------- per-example losses


def bce(*, q: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Binary cross-entropy per element: ``-(y log q + (1 - y) log(1 - q))``.

    Args:
        q: predicted probabilities of the positive class, any shape.
        y: 0/1 labels of the same shape.

    Returns:
        float64 losses of the same shape.
    """
    # one log per element, of the probability given to the outcome that happened; in place,
    # since these arrays are large and fresh memory is slow to touch
    out = np.subtract(1.0, q, dtype=np.float64)
    np.copyto(out, q, where=np.asarray(y) > 0)
    np.clip(out, EPS, 1.0 - EPS, out=out)
    np.log(out, out=out)
    return np.negative(out, out=out)


def categorical_nll(*, p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Negative log-likelihood per example of a categorical prediction.

    Args:
        p: ``(n, C)`` class probabilities.
        y: ``(n,)`` integer classes, or ``(n, C)`` soft labels (cross-entropy).

    Returns:
        float64 ``(n,)`` losses.
    """
    p = clamp(np.asarray(p, dtype=np.float64))
    y = np.asarray(y)
    if y.ndim == 1:
        return -np.log(np.take_along_axis(p, y.astype(np.int64)[:, None], axis=1)[:, 0])
    return -(y * np.log(p)).sum(axis=1)


def brier(*, q: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared error of a probability per element, ``(q - y)^2`` (mean it for the Brier score)."""
    return (np.asarray(q, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2


def top1(*, p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1.0 where the most probable class is the true class, per example (ties: lowest class)."""
    return (np.argmax(p, axis=1) == y).astype(np.float64)


def within_one(*, p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1.0 where the most probable class is at most one class away from the true one."""
    return (np.abs(np.argmax(p, axis=1) - np.asarray(y, dtype=np.int64)) <= 1).astype(np.float64)


def nll(*, p: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean categorical NLL (``sklearn.metrics.log_loss`` for proper probabilities)."""
    return float(weighted_mean(categorical_nll(p=p, y=y), weights=weights))


def brier_score(*, q: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Brier score of one threshold, ``sklearn.metrics.brier_score_loss``."""
    return float(weighted_mean(brier(q=q, y=y), weights=weights))


# --------------------------------------------------------------------------- ordinal <-> buckets


def bucket_index(tiles: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Bucket of a tile value: the number of thresholds it reaches (0..K)."""
    return np.searchsorted(np.asarray(thresholds), np.asarray(tiles), side="right").astype(np.int64)


def buckets_from_q(q: np.ndarray) -> np.ndarray:
    """Bucket probabilities of an ordinal head: ``p0 = 1 - q1, p_i = q_i - q_{i+1}, p_K = q_K``.

    A non-monotone head can give negative differences; those are clipped to 0 and the row is
    renormalised, so the result is always a distribution.

    Args:
        q: ``(n, K)`` probabilities ``P(highest >= T_k)``.

    Returns:
        ``(n, K + 1)`` bucket probabilities.
    """
    n, k = q.shape
    p = np.empty((n, k + 1))
    p[:, 0] = 1.0 - q[:, 0]
    np.subtract(q[:, :-1], q[:, 1:], out=p[:, 1:k])
    p[:, k] = q[:, -1]
    if np.any(p < 0):  # only a non-monotone head gets here
        np.clip(p, 0.0, None, out=p)
        p /= np.maximum(p.sum(axis=1, keepdims=True), EPS)
    return p


def q_from_buckets(p: np.ndarray) -> np.ndarray:
    """``P(highest >= T_k) = sum_{i >= k} p_i`` for k = 1..K, from ``(n, K + 1)`` buckets."""
    tail = np.cumsum(p[:, ::-1], axis=1)[:, ::-1]  # (n, K+1): tail[:, i] = sum_{j >= i} p_j
    return np.clip(tail[:, 1:], 0.0, 1.0)


def rank_inconsistency(*, q: np.ndarray) -> np.ndarray:
    """1.0 where an ordinal row is not monotone (some ``q_{k+1} > q_k``), per example."""
    return np.any(q[:, 1:] > q[:, :-1], axis=1).astype(np.float64)


def bucket_medians(*, final_score: np.ndarray, bucket: np.ndarray, n_buckets: int) -> np.ndarray:
    """Median final score per highest-tile bucket (one value per run, from the train split).

    An empty bucket takes the previous bucket's median (its increment ``delta_k`` is 0), and an
    empty bucket 0 takes 0.

    Returns:
        ``(K + 1,)`` medians ``m_i``; ``delta_k = m_k - m_{k-1}``.
    """
    out = np.zeros(n_buckets)
    for i in range(n_buckets):
        sel = final_score[bucket == i]
        out[i] = np.median(sel) if sel.size else (out[i - 1] if i else 0.0)
    return out


def expected_score(*, q: np.ndarray, medians: np.ndarray) -> np.ndarray:
    """Expected final score of an ordinal head, ``E = m_0 + sum_k delta_k q_k``.

    Args:
        q: ``(n, K)`` threshold probabilities.
        medians: ``(K + 1,)`` bucket medians from :func:`bucket_medians`.

    Returns:
        ``(n,)`` expected scores (equals ``sum_i p_i m_i`` for a monotone head).
    """
    delta = np.diff(medians)  # (K,)
    return medians[0] + q @ delta


# --------------------------------------------------------------------------- calibration


def _order(x: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    # quicksort: every user of an order groups ties itself, so stability is not needed
    return np.argsort(x) if order is None else order


def bin_of(p: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index with ``edges[b] <= p < edges[b+1]``; exactly 0 is bin 0 and exactly 1 the last.

    Args:
        p: ``(n,)`` probabilities in [0, 1].
        edges: ``(bins + 1,)`` increasing edges from 0 to 1.

    Returns:
        int64 ``(n,)`` bin indices.
    """
    nb = edges.size - 1
    if not np.array_equal(edges, np.linspace(0.0, 1.0, nb + 1)):
        return np.clip(np.searchsorted(edges, p, side="right") - 1, 0, nb - 1)
    # uniform edges: floor(p * bins), then a +-1 fix where rounding crossed an edge
    b = np.clip((p * nb).astype(np.int64), 0, nb - 1)
    b -= p < edges[b]
    b += (p >= edges[np.minimum(b + 1, nb)]) & (b < nb - 1)
    return b


def levels(
    x: np.ndarray, bins: int, *, weights: np.ndarray | None = None, order: np.ndarray | None = None
) -> np.ndarray:
    """Equal-mass bin (quantile level) of every value, from one sort.

    Inner edge b is the first sorted value whose cumulative weight passes ``b / bins`` of the
    total; a value's level is the number of inner edges at or below it, so ties share a level
    (and some levels may be empty).

    Args:
        x: ``(n,)`` values (probabilities, scores).
        bins: number of levels.
        weights: optional ``(n,)`` weights.
        order: optional argsort of ``x``.

    Returns:
        int64 ``(n,)`` levels in ``0..bins-1``.
    """
    order = _order(x, order)
    xs = x[order]
    cw = np.cumsum(_sorted_weights(weights, order))
    targets = cw[-1] * np.arange(1, bins) / bins
    inner = xs[np.minimum(np.searchsorted(cw, targets, side="right"), x.shape[0] - 1)]
    starts = np.searchsorted(xs, inner, side="left")  # first sorted position at or above edge
    sorted_levels = np.repeat(np.arange(bins), np.diff(np.r_[0, starts, x.shape[0]]))
    out = np.empty(x.shape[0], dtype=np.int64)
    out[order] = sorted_levels
    return out


def calibration_bins(
    *,
    p: np.ndarray,
    bins: int,
    strategy: Literal["uniform", "mass"] = "uniform",
    weights: np.ndarray | None = None,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Calibration bin of every probability: ``bins`` uniform bins over [0, 1], or ``bins``
    equal-mass bins (:func:`levels`; ``order`` is an optional argsort of ``p``)."""
    if strategy == "uniform":
        return bin_of(p, np.linspace(0.0, 1.0, bins + 1))
    return levels(p, bins, weights=weights, order=order)


def reliability(
    *, p: np.ndarray, y: np.ndarray, index: np.ndarray, bins: int, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin weight, sum of probabilities and sum of outcomes (a reliability diagram's data).

    Args:
        p: ``(n,)`` probabilities. y: ``(n,)`` 0/1 outcomes.
        index: ``(n,)`` bin of each row (:func:`calibration_bins`).
        bins: number of bins.
        weights: optional ``(n,)`` weights.

    Returns:
        ``(count, sum_p, sum_y)``, each ``(bins,)``.
    """
    y = np.asarray(y, dtype=np.float64)
    if weights is None:
        return (
            np.bincount(index, None, bins).astype(np.float64),
            np.bincount(index, p, bins),
            np.bincount(index, y, bins),
        )
    w = np.asarray(weights, dtype=np.float64)
    return (
        np.bincount(index, w, bins),
        np.bincount(index, w * p, bins),
        np.bincount(index, w * y, bins),
    )


def ece_from(count: np.ndarray, sum_p: np.ndarray, sum_y: np.ndarray) -> float:
    """ECE of a reliability table: ``sum_b |sum_p_b - sum_y_b| / W``."""
    return float(np.abs(sum_p - sum_y).sum() / count.sum())


def ece(
    *,
    p: np.ndarray,
    y: np.ndarray,
    bins: int = 15,
    strategy: Literal["uniform", "mass"] = "uniform",
    weights: np.ndarray | None = None,
    order: np.ndarray | None = None,
) -> float:
    """Expected calibration error, ``sum_b W_b |mean p_b - mean y_b| / W``.

    Args:
        p: ``(n,)`` predicted probabilities (of a threshold, or of the top class).
        y: ``(n,)`` 0/1 outcomes.
        bins: number of bins.
        strategy: ``"uniform"`` (even widths) or ``"mass"`` (equal weight per bin).
        weights: optional ``(n,)`` weights.
        order: optional argsort of ``p`` (equal-mass bins only).

    Returns:
        The ECE, in probability units.
    """
    p = np.asarray(p, dtype=np.float64)
    index = calibration_bins(p=p, bins=bins, strategy=strategy, weights=weights, order=order)
    return ece_from(*reliability(p=p, y=y, index=index, bins=bins, weights=weights))


def brier_decomposition(
    count: np.ndarray, sum_p: np.ndarray, sum_y: np.ndarray
) -> dict[str, float]:
    """Murphy's decomposition of the Brier score from a uniform-bin reliability table.

    ``brier = reliability - resolution + uncertainty`` holds exactly when the forecasts are
    constant inside each bin; otherwise the small remainder is the within-bin variance terms.

    Returns:
        ``{"reliability", "resolution", "uncertainty"}``.
    """
    total = count.sum()
    base = sum_y.sum() / total
    nz = count > 0
    pb, yb = sum_p[nz] / count[nz], sum_y[nz] / count[nz]
    return {
        "reliability": float((count[nz] * (pb - yb) ** 2).sum() / total),
        "resolution": float((count[nz] * (yb - base) ** 2).sum() / total),
        "uncertainty": float(base * (1.0 - base)),
    }


# --------------------------------------------------------------------------- ranking


def _tie_groups(sorted_scores: np.ndarray) -> np.ndarray:
    """Group id of each sorted score, equal scores sharing one id."""
    new = np.empty(sorted_scores.shape[0], dtype=bool)
    new[:1] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new[1:])
    return np.cumsum(new) - 1


def auroc(
    *,
    score: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray | None = None,
    order: np.ndarray | None = None,
) -> float:
    """Area under the ROC curve (weighted Mann-Whitney; a tied pair counts one half).

    Args:
        score: ``(n,)`` scores, higher = more likely positive.
        y: ``(n,)`` 0/1 labels.
        weights: optional ``(n,)`` weights.
        order: optional argsort of ``score`` (reused across thresholds and replicates).

    Returns:
        The AUROC, or NaN when only one class is present.
    """
    order = _order(score, order)
    g = _tie_groups(score[order])
    gp, gn = _class_sums(g, np.asarray(y)[order] > 0, _sorted_weights(weights, order))
    n_pos, n_neg = gp.sum(), gn.sum()
    if n_pos <= 0 or n_neg <= 0:
        return float("nan")
    below = np.cumsum(gn) - gn  # negatives strictly below each tie group
    return float((gp * (below + 0.5 * gn)).sum() / (n_pos * n_neg))


def pr_curve(
    *,
    score: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray | None = None,
    order: np.ndarray | None = None,
    max_points: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall of ``score >= t`` at every distinct score t, t decreasing.

    Args:
        score, y, weights, order: as for :func:`auroc`.
        max_points: keep at most this many evenly spaced distinct thresholds (for plots).

    Returns:
        ``(precision, recall, thresholds)``, each ``(distinct scores,)`` or fewer.
    """
    order = _order(score, order)
    desc = order[::-1]
    s = score[desc]
    w = _sorted_weights(weights, desc)
    tp = np.cumsum(w * (np.asarray(y)[desc] > 0))
    predicted_all = np.cumsum(w)
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # end of each tie group
    if max_points is not None and last.size > max_points:
        last = last[np.unique(np.linspace(0, last.size - 1, max_points).astype(np.int64))]
    predicted = predicted_all[last]
    precision = np.divide(tp[last], predicted, out=np.ones_like(predicted), where=predicted > 0)
    recall = tp[last] / tp[-1] if tp[-1] > 0 else np.zeros_like(predicted)
    return precision, recall, s[last]


def precision_recall(
    *, q: np.ndarray, y: np.ndarray, cut: float = 0.5, weights: np.ndarray | None = None
) -> tuple[float, float]:
    """Precision and recall of the decision ``q >= cut`` (NaN where undefined)."""
    w = _weights(weights, q.shape[0])
    pred = q >= cut
    pos = np.asarray(y).astype(bool)
    tp = w[pred & pos].sum()
    n_pred, n_pos = w[pred].sum(), w[pos].sum()
    return (
        float(tp / n_pred) if n_pred > 0 else float("nan"),
        float(tp / n_pos) if n_pos > 0 else float("nan"),
    )


def confusion_matrix(
    *, true: np.ndarray, pred: np.ndarray, n_classes: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """``(C, C)`` matrix, rows = true class, columns = predicted class (weighted counts)."""
    idx = np.asarray(true, dtype=np.int64) * n_classes + np.asarray(pred, dtype=np.int64)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    return np.bincount(idx, w, n_classes * n_classes).reshape(n_classes, n_classes)


def midranks(
    x: np.ndarray, *, weights: np.ndarray | None = None, order: np.ndarray | None = None
) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank; weighted ranks count each row ``w`` times."""
    order = _order(x, order)
    g = _tie_groups(x[order])
    gw = np.bincount(g, None if weights is None else np.asarray(weights, np.float64)[order])
    before = np.cumsum(gw) - gw
    ranks = np.empty(x.shape[0])
    ranks[order] = (before + (gw + 1.0) / 2.0)[g]
    return ranks


def pearson(*, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Weighted Pearson correlation (``scipy.stats.pearsonr`` when unweighted)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    dx = x - weighted_mean(x, weights=weights)
    dy = y - weighted_mean(y, weights=weights)
    sxy = weighted_mean(dx * dy, weights=weights)
    sxx = weighted_mean(dx * dx, weights=weights)
    syy = weighted_mean(dy * dy, weights=weights)
    return float(sxy / np.sqrt(sxx * syy)) if sxx > 0 and syy > 0 else float("nan")


def spearman(
    *,
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray | None = None,
    x_order: np.ndarray | None = None,
    y_order: np.ndarray | None = None,
) -> float:
    """Weighted Spearman correlation: Pearson of (weighted) midranks, ``scipy.stats.spearmanr``."""
    rx = midranks(np.asarray(x), weights=weights, order=x_order)
    ry = midranks(np.asarray(y), weights=weights, order=y_order)
    return pearson(x=rx, y=ry, weights=weights)
