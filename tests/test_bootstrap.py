"""By-run bootstrap: replicates equal the metric on the resampled rows; intervals cover."""

import numpy as np
import pytest
from scipy import stats as ss
from sklearn import metrics as skm

from vh.eval import bootstrap as B
from vh.eval import metrics as M

TOL = 1e-9


def _rows(rng, n_runs=40, per_run=(5, 30)):
    """Rows grouped by run (run ids not contiguous), with a per-run effect on the scores."""
    sizes = rng.integers(*per_run, n_runs)
    run_id = np.repeat(rng.permutation(1000)[:n_runs] * 7, sizes)
    effect = rng.normal(0, 1, n_runs)[np.repeat(np.arange(n_runs), sizes)]
    score = 1 / (1 + np.exp(-(effect + rng.normal(0, 1, run_id.size))))
    y = (rng.uniform(size=run_id.size) < score).astype(float)
    return run_id, score, y


def _resampled_rows(index, w_runs):
    """Row indices of one resample: each row of run r repeated w_runs[r] times."""
    return np.repeat(np.arange(index.code.size), w_runs[index.code].astype(np.int64))


def test_draw_weights_is_a_seeded_multinomial():
    w = B.draw_weights(n_runs=50, n_boot=2000, seed=3)
    assert w.shape == (2000, 50) and np.all(w.sum(1) == 50)
    assert np.array_equal(w, B.draw_weights(n_runs=50, n_boot=2000, seed=3))
    assert not np.array_equal(w, B.draw_weights(n_runs=50, n_boot=2000, seed=4))
    # multinomial(50, 1/50): mean 1, variance 1 - 1/50 per run
    assert abs(w.mean() - 1) < 1e-12 and abs(w.var() - 0.98) < 0.03


def test_replicates_equal_metrics_on_resampled_rows():
    rng = np.random.default_rng(0)
    run_id, score, y = _rows(rng)
    x = rng.normal(size=score.size)
    idx = B.run_index(run_id)
    cells = M.calibration_bins(p=score, bins=10)
    stats = {
        "nll": B.Mean(idx, M.bce(q=score, y=y)),
        "rmse": B.Rmse(idx, score - y),
        "ece": B.Ece(idx, score, y, cells, 10),
        "pearson": B.Pearson(idx, x, score),
    }
    w = B.draw_weights(n_runs=idx.n_runs, n_boot=20, seed=1)
    reps = B.replicate(stats, w)
    for b in range(20):
        r = _resampled_rows(idx, w[b])
        assert abs(reps["nll"][b] - skm.log_loss(y[r], score[r])) < TOL
        assert abs(reps["rmse"][b] - np.sqrt(np.mean((score[r] - y[r]) ** 2))) < TOL
        assert abs(reps["ece"][b] - M.ece(p=score[r], y=y[r], bins=10)) < TOL
        assert abs(reps["pearson"][b] - ss.pearsonr(x[r], score[r])[0]) < TOL


def test_point_values_equal_the_metrics():
    rng = np.random.default_rng(1)
    run_id, score, y = _rows(rng)
    idx = B.run_index(run_id)
    x = rng.normal(size=score.size).round(1)
    assert abs(B.Auroc(idx, score, y).point - skm.roc_auc_score(y, score)) < TOL
    assert abs(B.Spearman(idx, x, score).point - ss.spearmanr(x, score)[0]) < TOL
    cells = M.calibration_bins(p=score, bins=15, strategy="mass")
    ece = B.Ece(idx, score, y, cells, 15).point
    assert abs(ece - M.ece(p=score, y=y, strategy="mass")) < TOL


def test_auroc_replicates_exact_with_few_levels_and_close_otherwise():
    rng = np.random.default_rng(2)
    run_id, score, y = _rows(rng, n_runs=60)
    idx = B.run_index(run_id)
    w = B.draw_weights(n_runs=idx.n_runs, n_boot=30, seed=2)
    tied = np.round(score, 1)  # 11 levels: quantisation loses nothing
    reps = B.replicate(
        {"tied": B.Auroc(idx, tied, y), "cont": B.Auroc(idx, score, y, n_bins=64)}, w
    )
    for b in range(30):
        r = _resampled_rows(idx, w[b])
        assert abs(reps["tied"][b] - skm.roc_auc_score(y[r], tied[r])) < TOL
        assert abs(reps["cont"][b] - skm.roc_auc_score(y[r], score[r])) < 5e-3


def _correlated(seed: int, stat, n_boot: int, boot_seed: int):
    """Rows of :func:`_rows`, ``x`` = their score plus noise, and the replicates of
    ``stat(index, x, score)``: ``(index, x, score, weights, replicates)``."""
    rng = np.random.default_rng(seed)
    run_id, score, _ = _rows(rng)
    x = score + rng.normal(0, 0.3, score.size)
    idx = B.run_index(run_id)
    w = B.draw_weights(n_runs=idx.n_runs, n_boot=n_boot, seed=boot_seed)
    return idx, x, score, w, B.replicate({"s": stat(idx, x, score)}, w)["s"]


def test_spearman_replicates_match_scipy_on_resampled_rows():
    idx, x, score, w, reps = _correlated(3, B.Spearman, n_boot=10, boot_seed=0)
    rx, ry = ss.rankdata(x), ss.rankdata(score)
    for b in range(10):
        r = _resampled_rows(idx, w[b])
        # exact: Pearson (scipy) of the full-sample ranks, rows repeated
        assert abs(reps[b] - ss.pearsonr(rx[r], ry[r])[0]) < TOL
        # the approximation: re-ranking the resample (scipy) moves it ~0.01 on 700 rows
        assert abs(reps[b] - ss.spearmanr(x[r], score[r])[0]) < 0.03


def test_blocks_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(4)
    run_id, score, y = _rows(rng)
    idx = B.run_index(run_id)
    stats = {f"a{i}": B.Auroc(idx, score ** (i + 1), y, n_bins=32) for i in range(3)}
    w = B.draw_weights(n_runs=idx.n_runs, n_boot=50, seed=0)
    whole = B.replicate(stats, w)
    monkeypatch.setattr(B, "_BLOCK_BYTES", 1)  # one statistic per product
    split = B.replicate(stats, w)
    for k in stats:
        np.testing.assert_allclose(whole[k], split[k], rtol=0, atol=1e-12)


def _bootstrap_t_by_hand(run_id, values, w, ci=0.95):
    """Studentized interval of a ratio mean (no vh code): each drawn copy of a run is its own
    cluster, so a replicate's variance is ``sum_r w_r (s_r - m_b n_r)^2 / N_b^2``."""
    runs, code = np.unique(run_id, return_inverse=True)
    s = np.array([values[code == r].sum() for r in range(runs.size)])
    n = np.array([(code == r).sum() for r in range(runs.size)], dtype=float)
    point = values.mean()
    se = np.sqrt(((s - point * n) ** 2).sum()) / n.sum()
    t = []
    for wb in w:
        rows = np.repeat(np.arange(values.size), wb[code].astype(int))
        m = values[rows].mean()
        se_b = np.sqrt((wb * (s - m * n) ** 2).sum()) / rows.size
        t.append((m - point) / se_b)
    t_lo, t_hi = np.quantile(t, [(1 - ci) / 2, (1 + ci) / 2])
    return point - t_hi * se, point - t_lo * se


def test_paired_difference_interval_is_the_bootstrap_t_of_the_row_difference():
    rng = np.random.default_rng(5)
    run_id, score, y = _rows(rng)
    other = np.clip(score + rng.normal(0, 0.1, score.size), 0.01, 0.99)
    idx = B.run_index(run_id)
    w = B.draw_weights(n_runs=idx.n_runs, n_boot=200, seed=0)
    la, lb = M.bce(q=score, y=y), M.bce(q=other, y=y)
    reps = B.replicate({"a": B.Mean(idx, la), "b": B.Mean(idx, lb)}, w)
    diff = reps["a"] - reps["b"]
    for b in range(5):  # the replicates: the difference of log losses on resampled rows
        r = _resampled_rows(idx, w[b])
        ref = skm.log_loss(y[r], score[r]) - skm.log_loss(y[r], other[r])
        assert abs(diff[b] - ref) < TOL
    lo, hi = B.interval(diff)
    ref_lo, ref_hi = _bootstrap_t_by_hand(run_id, la - lb, w)
    assert lo == pytest.approx(ref_lo, abs=1e-9) and hi == pytest.approx(ref_hi, abs=1e-9)
    # a plain array (provenance lost) falls back to the percentile interval
    assert B.interval(np.asarray(diff)) == B.percentile(diff)
    assert B.excludes_zero(0.1, 0.2) and B.excludes_zero(-0.2, -0.1)
    assert not B.excludes_zero(-0.1, 0.2)


def test_bca_of_a_correlation_matches_a_direct_computation():
    idx, x, score, _, reps = _correlated(6, B.Pearson, n_boot=400, boot_seed=1)
    point = ss.pearsonr(x, score)[0]
    jack = np.array(  # leave one run out, scipy on the remaining rows
        [ss.pearsonr(x[idx.code != r], score[idx.code != r])[0] for r in range(idx.n_runs)]
    )
    z0 = ss.norm.ppf(np.mean(reps < point))
    d = jack.mean() - jack
    acc = (d**3).sum() / (6 * ((d**2).sum()) ** 1.5)
    z = ss.norm.ppf([0.025, 0.975])
    ref = np.quantile(reps, ss.norm.cdf(z0 + (z0 + z) / (1 - acc * (z0 + z))))
    assert B.interval(reps) == pytest.approx(tuple(ref), abs=1e-9)


def test_interval_of_a_plain_array_is_the_percentile_interval_of_finite_replicates():
    reps = np.r_[np.arange(1001.0), np.nan]
    assert B.interval(reps, 0.9) == pytest.approx((50.0, 950.0), abs=1e-9)
    assert all(np.isnan(B.interval(np.array([np.nan]))))


@pytest.mark.slow
def test_by_run_intervals_cover_the_truth():
    # planted: runs with a shared effect (rows inside a run are correlated). Row values
    # v = u_run + noise, u ~ N(mu, 1); the mean's truth is mu. Scores for AUROC: positives
    # N(d, 1) + u, negatives N(0, 1) + u with u ~ N(0, s^2) per run; across runs the pair
    # difference is N(d, 2 (1 + s^2)), so the AUROC's truth is Phi(d / sqrt(2 (1 + s^2))) up
    # to the 1/R share of within-run pairs.
    rng = np.random.default_rng(123)
    mu, d, s, n_runs, trials = 0.3, 1.0, 1.0, 120, 400
    truth_auc = ss.norm.cdf(d / np.sqrt(2 * (1 + s * s)))
    hits = {"mean": 0, "auroc": 0}
    for t in range(trials):
        sizes = rng.integers(5, 40, n_runs)
        code = np.repeat(np.arange(n_runs), sizes)
        u = rng.normal(0, 1, n_runs)[code]
        idx = B.run_index(code)
        y = rng.uniform(size=code.size) < 0.4
        score = s * u + d * y + rng.normal(size=code.size)
        stats = {
            "mean": B.Mean(idx, mu + u + rng.normal(size=code.size)),
            "auroc": B.Auroc(idx, score, y),
        }
        reps = B.replicate(stats, B.draw_weights(n_runs=n_runs, n_boot=1000, seed=t))
        for k, truth in (("mean", mu), ("auroc", truth_auc)):
            lo, hi = B.interval(reps[k], 0.95)
            hits[k] += lo <= truth <= hi
    for k, h in hits.items():
        print(f"coverage {k}: {h / trials:.3f}")
        assert 0.90 <= h / trials <= 0.98, (k, h / trials)
