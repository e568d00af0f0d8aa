"""Coverage of the by-run intervals at few runs, on skewed planted data (default suite).

Planted generator (one draw = one test set of R runs):

- run lengths geometric with mean 30 (unequal: a few runs are several times the typical one);
- per-run effect ``u ~ Exponential(1)`` (skewness 2), row values ``v = u * Exponential(1)``:
  the mean metric is the ratio ``sum v / rows`` (rows of long runs count more, as in the
  report), its truth ``E[u] = 1`` analytically (u independent of the length);
- a second head's loss ``v + d`` with ``d = 0.05 u e - 0.02``: the paired difference's truth
  is ``0.05 - 0.02 = 0.03``;
- labels with a skewed per-run base rate ``a ~ Exponential(1) - 1.5``, ``y ~ Bernoulli(
  expit(a))`` and scores ``y + 0.7 a + N(0, 1)``: AUROC's truth is the pooled AUROC of a very
  large population from the same generator (50,000 runs, computed once).

Each size runs ``N_REP`` = 400 independent test sets; the Monte Carlo standard error of a
coverage near 0.94 is ``sqrt(0.94 * 0.06 / 400)`` = 1.2 %. Measured (these seeds, 500
resamples, 64 AUROC levels; pct = the plain percentile interval, new = :func:`vh.eval.bootstrap.
interval`, studentized):

====  =========  =====  =========  =====  =========  =====
R     mean pct   new    AUROC pct  new    diff pct   new
====  =========  =====  =========  =====  =========  =====
20    0.903      0.933  0.870      0.900  0.890      0.933
50    0.893      0.923  0.903      0.915  0.898      0.915
200   0.940      0.958  0.945      0.940  0.948      0.955
====  =========  =====  =========  =====  =========  =====

The studentized interval is at or near the 93-97 % goal for the ratio mean and the paired
difference; AUROC at 20-50 runs stays near 90-92 % (its linearised variance is rough with so
few clusters), better than the percentile interval's 87-90 %. The assertion is therefore the
floor "never below 90 %", less about one Monte Carlo s.e. at 20 runs (the seed is fixed: the
slack is for the estimate, not for luck), and 0.99 above (an interval that always covers is
too wide to be useful).
"""

import numpy as np
import pytest
from scipy import special

from vh.eval import bootstrap as B
from vh.eval import metrics as M

N_REP = 400
N_BOOT = 500
LOWER = {20: 0.89, 50: 0.90, 200: 0.90}


def _draw(rng: np.random.Generator, n_runs: int):
    """One planted test set: run code per row, the two heads' losses, labels, scores."""
    length = rng.geometric(1 / 30, n_runs)
    code = np.repeat(np.arange(n_runs), length)
    n = code.size
    u = rng.exponential(1.0, n_runs)[code]
    loss_a = u * rng.exponential(1.0, n)
    loss_b = loss_a + 0.05 * u * rng.exponential(1.0, n) - 0.02
    a = (rng.exponential(1.0, n_runs) - 1.5)[code]
    y = (rng.uniform(size=n) < special.expit(a)).astype(float)
    score = y + 0.7 * a + rng.normal(size=n)
    return code, loss_a, loss_b, y, score


@pytest.fixture(scope="module")
def auroc_truth() -> float:
    """Pooled AUROC of 50,000 runs (about 1.5M rows): its own error is ~2e-4."""
    code, _, _, y, score = _draw(np.random.default_rng(999), 50_000)
    return M.auroc(score=score, y=y)


def _coverage(n_runs: int, truth: dict[str, float], method) -> dict[str, float]:
    rng = np.random.default_rng(n_runs)
    weights = B.draw_weights(n_runs=n_runs, n_boot=N_BOOT, seed=n_runs)
    hits = dict.fromkeys(truth, 0)
    for _ in range(N_REP):
        code, loss_a, loss_b, y, score = _draw(rng, n_runs)
        idx = B.run_index(code)
        stats = {
            "a": B.Mean(idx, loss_a),
            "b": B.Mean(idx, loss_b),
            "auroc": B.Auroc(idx, score, y, n_bins=64),
        }
        reps = B.replicate(stats, weights)
        figures = {"mean": reps["a"], "auroc": reps["auroc"], "diff": reps["b"] - reps["a"]}
        for k, r in figures.items():
            lo, hi = method(r, 0.95)
            hits[k] += lo <= truth[k] <= hi
    return {k: h / N_REP for k, h in hits.items()}


@pytest.mark.parametrize("n_runs", [20, 50, 200])
def test_by_run_intervals_cover_skewed_planted_truth(n_runs, auroc_truth):
    truth = {"mean": 1.0, "auroc": auroc_truth, "diff": 0.03}
    cov = _coverage(n_runs, truth, B.interval)
    print(f"coverage at {n_runs} runs: {cov}")
    for k, c in cov.items():
        assert LOWER[n_runs] <= c <= 0.99, (n_runs, k, c)
