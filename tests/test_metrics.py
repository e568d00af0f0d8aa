"""Every metric against an independent reference (scikit-learn, scipy, a direct loop).

Weighted versions are checked two ways: against sklearn's ``sample_weight`` where it has one,
and with integer weights against the unweighted metric on the repeated rows, which is the
property the by-run bootstrap relies on.
"""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from vh.eval import metrics as M

TOL = 1e-9


@pytest.fixture(params=[0, 1, 2])
def rng(request):
    return np.random.default_rng(request.param)


def _binary(rng, n=400, ties=False):
    q = rng.uniform(0.001, 0.999, n)
    if ties:
        q = np.round(q, 1)  # many tied scores
    y = (rng.uniform(size=n) < q).astype(np.int64)
    return q, y


def _int_weights(rng, n):
    return rng.integers(0, 4, n)


def _mean_bce(q, y, w=None):
    """What the report's NLL of one threshold is: the (weighted) mean of the per-row bce."""
    return float(M.weighted_mean(M.bce(q=q, y=y), weights=w))


def test_bce_matches_log_loss(rng):
    q, y = _binary(rng)
    w = rng.uniform(0.1, 3.0, q.size)
    assert abs(_mean_bce(q, y) - skm.log_loss(y, q)) < TOL
    assert abs(_mean_bce(q, y, w) - skm.log_loss(y, q, sample_weight=w)) < TOL


def test_categorical_nll_matches_log_loss_hard_and_soft(rng):
    n, c = 300, 7
    p = rng.dirichlet(np.ones(c), n)
    y = rng.integers(0, c, n)
    w = rng.uniform(0.1, 3.0, n)
    ref = skm.log_loss(y, p, labels=np.arange(c))
    assert abs(M.nll(p=p, y=y) - ref) < TOL
    assert (
        abs(M.nll(p=p, y=y, weights=w) - skm.log_loss(y, p, labels=np.arange(c), sample_weight=w))
        < TOL
    )
    one_hot = np.eye(c)[y]  # soft labels that are one-hot give the same cross-entropy
    assert abs(M.nll(p=p, y=one_hot) - ref) < TOL


def test_probabilities_exactly_0_and_1_stay_finite():
    q = np.array([0.0, 1.0, 0.0, 1.0])
    y = np.array([0, 1, 1, 0])
    losses = M.bce(q=q, y=y)
    assert np.all(np.isfinite(losses))
    assert losses[0] < 1e-9 and losses[1] < 1e-9  # right and certain: ~0
    assert abs(losses[2] + np.log(M.EPS)) < 1e-6  # wrong and certain: -log(EPS)


def test_brier_matches_sklearn(rng):
    q, y = _binary(rng)
    w = rng.uniform(0.1, 3.0, q.size)
    assert abs(M.brier_score(q=q, y=y) - skm.brier_score_loss(y, q)) < TOL
    assert (
        abs(M.brier_score(q=q, y=y, weights=w) - skm.brier_score_loss(y, q, sample_weight=w)) < TOL
    )


def test_brier_decomposition_is_exact_for_binned_forecasts(rng):
    # forecasts constant inside each of the 10 uniform bins (bin centres): Murphy's identity
    # brier = reliability - resolution + uncertainty then holds exactly
    centres = (np.arange(10) + 0.5) / 10
    q = rng.choice(centres, 2000)
    y = (rng.uniform(size=q.size) < q**0.8).astype(float)
    table = M.reliability(p=q, y=y, index=M.calibration_bins(p=q, bins=10), bins=10)
    d = M.brier_decomposition(*table)
    assert (
        abs(M.brier_score(q=q, y=y) - (d["reliability"] - d["resolution"] + d["uncertainty"])) < TOL
    )
    assert abs(d["uncertainty"] - y.mean() * (1 - y.mean())) < TOL


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_sklearn(rng, ties):
    q, y = _binary(rng, ties=ties)
    w = rng.uniform(0.1, 3.0, q.size)
    assert abs(M.auroc(score=q, y=y) - skm.roc_auc_score(y, q)) < TOL
    assert abs(M.auroc(score=q, y=y, weights=w) - skm.roc_auc_score(y, q, sample_weight=w)) < TOL


def test_auroc_one_class_is_nan():
    assert np.isnan(M.auroc(score=np.array([0.1, 0.5]), y=np.array([1, 1])))


def test_confusion_matrix_matches_sklearn(rng):
    t, p = rng.integers(0, 5, 500), rng.integers(0, 5, 500)
    w = rng.uniform(0.1, 3.0, 500)
    np.testing.assert_allclose(
        M.confusion_matrix(true=t, pred=p, n_classes=6),
        skm.confusion_matrix(t, p, labels=np.arange(6)),
        atol=TOL,
    )
    np.testing.assert_allclose(
        M.confusion_matrix(true=t, pred=p, n_classes=6, weights=w),
        skm.confusion_matrix(t, p, labels=np.arange(6), sample_weight=w),
        atol=TOL,
    )


def test_precision_recall_match_sklearn(rng):
    q, y = _binary(rng)
    w = rng.uniform(0.1, 3.0, q.size)
    pred = (q >= 0.5).astype(int)
    prec, rec = M.precision_recall(q=q, y=y, weights=w)
    assert abs(prec - skm.precision_score(y, pred, sample_weight=w)) < TOL
    assert abs(rec - skm.recall_score(y, pred, sample_weight=w)) < TOL


def test_pr_curve_points_match_sklearn(rng):
    q, y = _binary(rng, ties=True)
    precision, recall, thr = M.pr_curve(score=q, y=y)
    assert np.all(np.diff(thr) < 0)
    for p_, r_, t in zip(precision, recall, thr, strict=True):
        pred = (q >= t).astype(int)
        assert abs(p_ - skm.precision_score(y, pred)) < TOL
        assert abs(r_ - skm.recall_score(y, pred)) < TOL


def test_pearson_spearman_match_scipy(rng):
    x = rng.normal(size=300)
    y = x + rng.normal(size=300)
    assert abs(M.pearson(x=x, y=y) - stats.pearsonr(x, y)[0]) < TOL
    xt = np.round(x, 1)  # ties: midranks
    assert abs(M.spearman(x=xt, y=y) - stats.spearmanr(xt, y)[0]) < TOL


def test_accuracies_match_sklearn(rng):
    p = rng.dirichlet(np.ones(6), 500)
    y = rng.integers(0, 6, 500)
    assert abs(M.top1(p=p, y=y).mean() - skm.accuracy_score(y, p.argmax(1))) < TOL
    near = np.abs(p.argmax(1) - y) <= 1  # by hand
    assert abs(M.within_one(p=p, y=y).mean() - near.mean()) < TOL


# --------------------------------------------------------------------------- ECE vs a loop


def _ece_uniform_loop(p, y, bins):
    """ECE by the definition: bin b holds lo <= p < hi, and p == 1 goes to the last bin."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        sel = [i for i in range(len(p)) if lo <= p[i] < hi or (b == bins - 1 and p[i] == 1.0)]
        if sel:
            total += len(sel) * abs(np.mean(p[sel]) - np.mean(y[sel]))
    return total / len(p)


def test_ece_uniform_matches_loop_with_exact_0_and_1(rng):
    p, y = _binary(rng, n=300)
    p[:10] = 0.0
    p[10:20] = 1.0
    p[20:30] = 0.5  # a bin edge for even bin counts
    y[:5] = 1
    for bins in (10, 15):
        assert abs(M.ece(p=p, y=y, bins=bins) - _ece_uniform_loop(p, y, bins)) < TOL
    b = M.bin_of(np.array([0.0, 1.0]), np.linspace(0, 1, 16))
    assert b.tolist() == [0, 14]


def test_fast_uniform_bins_equal_searchsorted(rng):
    # the arithmetic path for uniform edges must agree with the definition, edges included
    for bins in (7, 10, 15, 20):
        edges = np.linspace(0, 1, bins + 1)
        p = np.r_[rng.uniform(size=5000), edges, np.nextafter(edges, 2), np.nextafter(edges, -1)]
        p = np.clip(p, 0, 1)
        ref = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
        assert np.array_equal(M.bin_of(p, edges), ref)


def test_levels_are_equal_mass_and_keep_ties(rng):
    x = rng.normal(size=1000)
    lv = M.levels(x, 10)
    assert np.all(np.bincount(lv, minlength=10) == 100)
    assert np.all(np.diff(lv[np.argsort(x)]) >= 0)  # monotone in x
    t = np.round(x, 0)  # heavy ties: equal values, equal level
    lt = M.levels(t, 10)
    for v in np.unique(t):
        assert np.unique(lt[t == v]).size == 1


def test_ece_equal_mass_matches_sorted_chunks(rng):
    # no ties and n divisible by bins: equal-mass bins are consecutive chunks of the sort
    p = rng.permutation(np.linspace(0.0, 1.0, 1000))  # includes exactly 0 and 1
    y = (rng.uniform(size=1000) < p).astype(float)
    order = np.argsort(p)
    ref = sum(abs(p[c].mean() - y[c].mean()) * c.size for c in np.split(order, 10)) / 1000
    assert abs(M.ece(p=p, y=y, bins=10, strategy="mass") - ref) < TOL


def test_ece_equal_mass_keeps_ties_in_one_bin():
    p = np.array([0.2] * 6 + [0.9] * 4)
    y = np.array([0, 1, 0, 0, 0, 1, 1, 1, 1, 0])
    # two groups of ties -> two non-empty bins whatever the bin count
    ref = (6 * abs(0.2 - 2 / 6) + 4 * abs(0.9 - 3 / 4)) / 10
    assert abs(M.ece(p=p, y=y, bins=5, strategy="mass") - ref) < TOL


# --------------------------------------------------------------------------- weights == repeats


def test_integer_weights_equal_repeated_rows(rng):
    n = 300
    q, y = _binary(rng, n=n, ties=True)
    w = _int_weights(rng, n)
    rep = np.repeat(np.arange(n), w)
    qr, yr = q[rep], y[rep]
    x = rng.normal(size=n).round(1)
    pairs = [
        (_mean_bce(q, y, w), _mean_bce(qr, yr)),
        (M.brier_score(q=q, y=y, weights=w), M.brier_score(q=qr, y=yr)),
        (M.auroc(score=q, y=y, weights=w), M.auroc(score=qr, y=yr)),
        (M.ece(p=q, y=y, weights=w), M.ece(p=qr, y=yr)),
        (M.ece(p=q, y=y, weights=w, strategy="mass"), M.ece(p=qr, y=yr, strategy="mass")),
        (M.pearson(x=x, y=q, weights=w), M.pearson(x=x[rep], y=qr)),
        (M.spearman(x=x, y=q, weights=w), M.spearman(x=x[rep], y=qr)),
    ]
    for weighted, repeated in pairs:
        assert abs(weighted - repeated) < TOL


# --------------------------------------------------------------------------- ordinal helpers


def test_buckets_and_thresholds_round_trip(rng):
    q = np.sort(rng.uniform(size=(50, 6)), axis=1)[:, ::-1]  # monotone q_1 >= ... >= q_6
    p = M.buckets_from_q(q)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=TOL)
    np.testing.assert_allclose(M.q_from_buckets(p), q, atol=TOL)
    assert M.rank_inconsistency(q=q).sum() == 0
    bad = q.copy()
    bad[0, 3] = bad[0, 2] + 0.1
    assert M.rank_inconsistency(q=bad)[0] == 1 and np.all(M.buckets_from_q(bad) >= 0)


def test_bucket_index_and_expected_score():
    t = np.array([1024, 2048, 4096])
    assert M.bucket_index(np.array([512, 1024, 2048, 8192]), t).tolist() == [0, 1, 2, 3]
    medians = M.bucket_medians(
        final_score=np.array([5.0, 7.0, 20.0, 100.0]), bucket=np.array([0, 0, 1, 3]), n_buckets=4
    )
    assert medians.tolist() == [6.0, 20.0, 20.0, 100.0]  # empty bucket 2 carries bucket 1
    q = np.array([[1.0, 1.0, 0.0]])  # certain to reach 2048, not 4096: E = median of bucket 2
    assert M.expected_score(q=q, medians=medians)[0] == 20.0
    q = np.array([[0.5, 0.5, 0.5]])  # half bucket 0, half bucket 3: (6 + 100) / 2 by hand
    assert abs(M.expected_score(q=q, medians=medians)[0] - 53.0) < TOL


# --------------------------------------------------------------------------- documented conventions


def _mass_levels_by_hand(x, w, bins):
    """The documented equal-mass rule, by a loop: inner edge b (b = 1..bins-1) is the first
    sorted value whose cumulative weight exceeds ``b / bins`` of the total; a value's bin is
    the number of inner edges at or below it (ties share a bin, some bins may stay empty)."""
    order = np.argsort(x, kind="stable")
    xs, cw = x[order], np.cumsum(w[order])
    edges = []
    for b in range(1, bins):
        i = next((j for j in range(xs.size) if cw[j] > cw[-1] * b / bins), xs.size - 1)
        edges.append(xs[i])
    return np.array([sum(e <= v for e in edges) for v in x])


def test_ece_equal_mass_bins_follow_the_documented_rule_with_ties_and_weights(rng):
    n, bins = 203, 7  # n not a multiple of bins, heavy ties, uneven weights
    p = np.round(rng.uniform(size=n), 1)
    y = (rng.uniform(size=n) < p).astype(float)
    w = rng.integers(1, 5, n).astype(float)
    lv = _mass_levels_by_hand(p, w, bins)
    assert np.array_equal(M.calibration_bins(p=p, bins=bins, strategy="mass", weights=w), lv)
    ref = (
        sum(abs((w[m] * p[m]).sum() - (w[m] * y[m]).sum()) for m in (lv == b for b in range(bins)))
        / w.sum()
    )
    assert abs(M.ece(p=p, y=y, bins=bins, strategy="mass", weights=w) - ref) < TOL


def test_non_monotone_bucket_probabilities_sum_to_one_and_follow_the_clip_rule():
    q = np.array([[0.8, 0.3, 0.5, 0.1], [0.9, 0.7, 0.4, 0.2]])  # row 0 rises at k = 3
    raw = np.c_[1 - q[:, :1], q[:, :-1] - q[:, 1:], q[:, -1:]]  # p0 = 1 - q1, q_i - q_{i+1}, q_K
    np.testing.assert_allclose(raw.sum(1), 1.0, atol=TOL)  # the raw differences telescope to 1
    assert raw[0, 2] == pytest.approx(-0.2)
    p = M.buckets_from_q(q)
    # documented rule: negatives clipped to 0, the row renormalised; monotone rows untouched
    np.testing.assert_allclose(p[0], np.array([0.2, 0.5, 0.0, 0.4, 0.1]) / 1.2, atol=TOL)
    np.testing.assert_allclose(p[1], raw[1], atol=TOL)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=TOL)
