"""Binned heads scored as distributions and as trained, each figure against plain numpy.

- CRPS of a discrete distribution: exact, against a fine numerical integration and the energy
  form ``E|X - y| - E|X - X'| / 2``.
- The randomised PIT: against a loop; flat for a calibrated head, U-shaped for an
  overconfident one.
- A binned return head's per-state figures (CRPS, PIT, end-bin mass, mean, mode, soft and
  hard NLL) against a row-by-row computation, and the report's figures from them.
- A log-score head scored against the soft labels it was trained on: the training loss's own
  value, a Gaussian encoding built by hand, a temperature fitted on soft labels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import optimize, special
from scipy import stats as ss

from vh.config import EvalConfig
from vh.eval import distributions as D
from vh.eval import report as R
from vh.eval.formatting import num
from vh.eval.planted import planted
from vh.eval.predictions import Predictions, load_predictions, save_predictions
from vh.heads.targets import TargetSpec, get
from vh.heads.targets.returns import distribution_rows
from vh.transforms import muzero_h, muzero_h_inv

# --------------------------------------------------------------------------- references


def crps_energy(atoms, p, y):
    """CRPS = E|X - y| - E|X - X'| / 2 for X, X' independent draws of the distribution."""
    return float(p @ np.abs(atoms - y) - 0.5 * p @ np.abs(atoms[:, None] - atoms[None, :]) @ p)


def crps_numeric(atoms, p, y, n=400_001):
    """CRPS by the trapezoid rule on a fine grid spanning the atoms and y."""
    lo, hi = min(atoms[0], y) - 1.0, max(atoms[-1], y) + 1.0
    x = np.linspace(lo, hi, n)
    cdf = np.concatenate([[0.0], np.cumsum(p)])[np.searchsorted(atoms, x, side="right")]
    return float(np.trapezoid((cdf - (x >= y)) ** 2, x))


def two_hot(v, lo, hi, n):
    """Two-hot labels written out one value at a time (clipped to [lo, hi])."""
    w = (hi - lo) / (n - 1)
    out = np.zeros((len(v), n))
    for r, x in enumerate(np.clip(v, lo, hi)):
        i = min(int((x - lo) // w), n - 2)
        frac = (x - (lo + i * w)) / w
        out[r, i], out[r, i + 1] = 1 - frac, frac
    return out


def _report(tmp_path, preds, cfg=None):
    (tmp_path / "predictions").mkdir(parents=True, exist_ok=True)
    for p in preds:
        save_predictions(tmp_path / "predictions" / f"{p.name}.npz", p)
    (tmp_path / "eval.json").write_text(json.dumps({"runs": [p.name for p in preds]}))
    return R.build_report(tmp_path, cfg or EvalConfig(n_boot=50))


# --------------------------------------------------------------------------- CRPS, PIT


def test_crps_matches_integration_and_the_energy_form():
    rng = np.random.default_rng(0)
    atoms = np.sort(rng.uniform(-3, 5, size=9))
    p = rng.dirichlet(np.ones(9), size=12)
    y = np.r_[rng.uniform(-5, 7, size=9), atoms[0], atoms[4], atoms[-1]]  # outside and on atoms
    got = D.crps_discrete(atoms=atoms, p=p, y=y)
    for r in range(y.size):
        assert got[r] == pytest.approx(crps_energy(atoms, p[r], y[r]), abs=1e-12)
        assert got[r] == pytest.approx(crps_numeric(atoms, p[r], y[r]), abs=1e-4)
    # a point mass: the absolute error
    point = np.zeros((3, 9))
    point[:, 2] = 1.0
    np.testing.assert_allclose(
        D.crps_discrete(atoms=atoms, p=point, y=np.array([-9.0, atoms[2], 9.0])),
        np.abs(np.array([-9.0, atoms[2], 9.0]) - atoms[2]),
        atol=1e-12,
    )


def test_randomised_pit_matches_a_loop_and_is_flat_only_when_calibrated():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(6), size=50)
    k, u = rng.integers(0, 6, size=50), rng.random(50)
    want = [p[i, : k[i]].sum() + u[i] * p[i, k[i]] for i in range(50)]
    np.testing.assert_allclose(D.pit_randomized(p=p, k=k, u=u), want, atol=1e-12)

    n, c = 40_000, 12
    logits = 1.5 * rng.normal(size=(n, c))
    true = special.softmax(logits, axis=1)
    k = (rng.random((n, 1)) > np.cumsum(true, axis=1)).sum(1)  # drawn from the true p
    calibrated = D.pit_randomized(p=true, k=k, u=rng.random(n))
    share, dev = D.pit_histogram(calibrated, bins=10)
    assert share.sum() == pytest.approx(1.0) and dev < 0.06  # ~ 3 / sqrt(4000) at most
    assert ss.kstest(calibrated, "uniform").pvalue > 1e-3
    sharp = special.softmax(3.0 * logits, axis=1)  # overconfident: too many extreme PITs
    share, dev = D.pit_histogram(D.pit_randomized(p=sharp, k=k, u=rng.random(n)), bins=10)
    assert dev > 0.5 and share[0] > 0.15 and share[-1] > 0.15
    # the deviation is max |10 share - 1|, by hand
    pit = np.array([0.05] * 5 + [0.95] * 5 + [0.5] * 10)
    assert D.pit_histogram(pit, bins=10) == (
        pytest.approx([0.25, 0, 0, 0, 0, 0.5, 0, 0, 0, 0.25]),
        pytest.approx(4.0),
    )


# --------------------------------------------------------------------------- return heads


RSPEC = TargetSpec("return", (1024,), 21, "gaussian", lo=0.0, hi=20.0, sigma=0.75)


def _return_head(rng, n):
    """Returns (raw units), some beyond the support at both ends, and logits around them."""
    ret = np.r_[np.expm1(rng.uniform(0, 6, size=n - 4)), 0.0, 1e-3, 500.0, 2000.0]
    z = muzero_h(ret) + rng.normal(size=n)
    logits = -0.5 * (RSPEC.bin_centers[None, :] - z[:, None]) ** 2
    return ret, logits


def test_return_head_distribution_rows_match_a_row_by_row_computation():
    rng = np.random.default_rng(2)
    ret, logits = _return_head(rng, 40)
    out = distribution_rows(RSPEC, logits, ret, batch=7)  # several batches
    atoms = muzero_h_inv(RSPEC.bin_centers)
    u = np.random.default_rng(0).random(ret.size)  # the fixed PIT seed
    for i in range(ret.size):
        logp = logits[i] - special.logsumexp(logits[i])  # the training loss's log-softmax
        p = np.exp(logp)
        h = muzero_h(ret[i])
        k = int(np.clip(np.floor((h - RSPEC.lo) / RSPEC.bin_width + 0.5), 0, 20))  # bin of h
        edges = np.arange(22) - 0.5  # bin edges in these units (width 1, centres 0..20)
        mass = ss.norm.cdf(edges, np.clip(h, 0, 20), 0.75)
        soft = np.diff(mass) / (mass[-1] - mass[0])
        assert out["value"][i] == pytest.approx(muzero_h_inv(p @ RSPEC.bin_centers), rel=1e-9)
        assert out["nll_row"][i] == pytest.approx(-(soft * logp).sum(), rel=1e-9)
        # hard bins: eval's convention, probabilities clamped at 1e-12
        assert out["hard_nll_row"][i] == pytest.approx(-np.log(max(p[k], 1e-12)), rel=1e-9)
        assert out["crps_row"][i] == pytest.approx(crps_energy(atoms, p, ret[i]), rel=1e-9)
        assert out["pit"][i] == pytest.approx(p[:k].sum() + u[i] * p[k], abs=1e-12)
        assert (out["mass_low"][i], out["mass_high"][i]) == pytest.approx((p[0], p[-1]))
        assert out["end_bin"][i] == (1 if k == 20 else -1 if k == 0 else 0)
        assert out["mean"][i] == pytest.approx(p @ atoms, rel=1e-9)
        assert out["mode"][i] == atoms[np.argmax(p)]
    assert out["end_bin"][-2:].tolist() == [1, 1] and out["end_bin"][-4] == -1


def test_return_head_report_figures(tmp_path):
    base = planted(n_rows=1500, n_runs=40, heads={"o": ("ordinal", 0.3, 1)})[0]
    rng = np.random.default_rng(3)
    ret, logits = _return_head(rng, base.n)
    out = {"ret": ret, **distribution_rows(RSPEC, logits, ret, batch=256)}
    pred = Predictions(
        "ret", "return", base.thresholds, base.medians, base.rows, out, {"encoding": "gaussian"}
    )
    save_predictions(tmp_path / "p.npz", pred)
    assert load_predictions(tmp_path / "p.npz").out.keys() == out.keys()  # shapes accepted
    metrics = _report(tmp_path / "rep", [pred])
    run = metrics["runs"]["ret"]
    h = {k: v["value"] for k, v in run["headline"].items()}
    p = special.softmax(logits, axis=1)
    atoms = muzero_h_inv(RSPEC.bin_centers)
    crps = np.mean([crps_energy(atoms, p[i], ret[i]) for i in range(ret.size)])
    assert h["crps"] == pytest.approx(crps, rel=1e-9)
    assert h["mass_low"] == pytest.approx(p[:, 0].mean()) and h["mass_high"] == pytest.approx(
        p[:, -1].mean()
    )
    assert h["mae_mean"] == pytest.approx(np.mean(np.abs(p @ atoms - ret)))
    mode = atoms[p.argmax(1)]
    assert h["rmse_mode"] == pytest.approx(np.sqrt(np.mean((mode - ret) ** 2)))
    assert h["nll"] == pytest.approx(out["nll_row"].mean()) and h["hard_nll"] > 0
    d = run["distribution"]
    counts = np.histogram(out["pit"], bins=np.linspace(0, 1, 11))[0]
    np.testing.assert_allclose(d["pit_hist"], counts / ret.size)
    assert d["pit_max_dev"] == pytest.approx(np.max(np.abs(10 * counts / ret.size - 1)))
    assert d["end_bins"]["observed_high"] == pytest.approx(np.mean(muzero_h(ret) >= 19.5))
    assert [r["point"].split(" ")[0] for r in d["points"]] == [
        "h^-1(E[h(return)])",
        "E[return]",
        "mode",
    ]
    assert (tmp_path / "rep" / "plots" / "ret_pit.png").is_file()
    page = (tmp_path / "rep" / "report.md").read_text()
    assert "ret as a distribution" in page and "CRPS (raw return units" in page
    assert "hard-bin NLL" in page
    assert f"As a distribution, ret has CRPS {num(crps)} (raw return units" in page


# --------------------------------------------------------------------------- log-score heads


LS = TargetSpec("logscore", (1024,), 17, "twohot", lo=5.0, hi=13.0)


def _logscore_pred(base, spec, rng, val_n=600):
    """A log-score head, overconfident by 3x, written as eval writes it (eval_outputs)."""
    kind = get("logscore")

    def logits(score):
        z = np.log1p(score) + 0.5 * rng.normal(size=score.size)
        return -3.0 * (spec.bin_centers - z[:, None]) ** 2

    out = kind.eval_outputs(spec, logits(base.rows["final_score"]), {}, 1024)
    val_score = np.exp(7.0 + 0.8 * rng.integers(0, 7, size=val_n))
    out["val_logits"] = logits(val_score)
    out["val_y"] = kind.eval_labels({"final_score": val_score}, base.thresholds, out)
    pred = Predictions("ls", "logscore", base.thresholds, base.medians, base.rows, out)
    return pred, val_score


def test_logscore_nll_is_the_training_loss_on_soft_labels(tmp_path):
    import jax.numpy as jnp

    from vh.heads.losses import categorical_objective

    base = planted(n_rows=2000, n_runs=60, heads={"o": ("ordinal", 0.3, 1)})[0]
    rng = np.random.default_rng(4)
    pred, val_score = _logscore_pred(base, LS, rng)
    assert pred.out["val_y"].shape == (600, 17)  # soft validation labels
    metrics = _report(tmp_path, [pred])
    run = metrics["runs"]["ls"]
    h = {k: v["value"] for k, v in run["headline"].items()}
    score = base.rows["final_score"]
    p = special.softmax(pred.out["logits"], axis=1)
    logp = special.log_softmax(pred.out["logits"], axis=1)
    soft = two_hot(np.log1p(score), 5.0, 13.0, 17)
    assert h["nll"] == pytest.approx(-(soft * logp).sum(1).mean(), rel=1e-9)
    # the training code's own validation NLL on the same logits and values
    loss = categorical_objective(LS).nll(
        jnp.asarray(pred.out["logits"], jnp.float32), jnp.asarray(np.log1p(score), jnp.float32)
    )
    assert h["nll"] == pytest.approx(float(np.mean(loss)), rel=1e-4)
    hard = np.clip(np.floor((np.log1p(score) - 4.75) / 0.5), 0, 16).astype(int)  # bins of 0.5
    picked = np.clip(p[np.arange(score.size), hard], 1e-12, 1)  # eval clamps hard-bin NLL
    assert h["hard_nll"] == pytest.approx(-np.log(picked).mean(), rel=1e-9)
    assert h["nll"] != pytest.approx(h["hard_nll"], rel=1e-3)  # two different figures
    assert run["nll_labels"] == "two-hot soft labels"

    # the temperature minimises the soft cross-entropy of the validation states
    vsoft = two_hot(np.log1p(val_score), 5.0, 13.0, 17)

    def val_ce(log_t):
        z = pred.out["val_logits"] / np.exp(log_t)
        return -(vsoft * special.log_softmax(z, axis=1)).sum(1).mean()

    want = np.exp(optimize.minimize_scalar(val_ce, bounds=(-3, 3), method="bounded").x)
    temp = run["temperature"]
    assert temp["T"] == pytest.approx(want, rel=1e-3) and temp["T"] > 1.0
    scaled = special.log_softmax(pred.out["logits"] / temp["T"], axis=1)
    assert temp["after"]["nll"] == pytest.approx(-(soft * scaled).sum(1).mean(), rel=1e-9)
    assert set(temp["before"]) == {"nll", "hard_nll", "ece_top"}
    page = (tmp_path / "report.md").read_text()
    assert "hard-bin NLL" in page and "logscore loss: CE against the soft labels" in page


def test_logscore_gaussian_soft_labels_and_files_without_the_encoding(tmp_path):
    base = planted(n_rows=800, n_runs=30, heads={"o": ("ordinal", 0.3, 1)})[0]
    spec = TargetSpec("logscore", (1024,), 17, "gaussian", lo=5.0, hi=13.0, sigma=1.5)
    pred, _ = _logscore_pred(base, spec, np.random.default_rng(5), val_n=100)
    assert float(pred.out["label_sigma"]) == 1.5
    v = np.clip(np.log1p(base.rows["final_score"]), 5.0, 13.0)
    edges = np.r_[spec.bin_centers - 0.25, 13.25]
    cdf = ss.norm.cdf((edges[None, :] - v[:, None]) / (1.5 * 0.5))
    soft = np.diff(cdf, axis=1) / (cdf[:, -1:] - cdf[:, :1])
    p = special.softmax(pred.out["logits"], axis=1)
    metrics = _report(tmp_path / "a", [pred])
    assert metrics["runs"]["ls"]["headline"]["nll"]["value"] == pytest.approx(
        -(soft * special.log_softmax(pred.out["logits"], axis=1)).sum(1).mean(), rel=1e-9
    )
    assert metrics["runs"]["ls"]["nll_labels"] == "Gaussian soft labels (sigma 1.5 bins)"
    # a file of an older vh (no label_sigma, hard validation labels): hard bins, and it says so
    old = {k: v for k, v in pred.out.items() if k not in ("label_sigma", "val_logits", "val_y")}
    pred.out = old
    metrics = _report(tmp_path / "b", [pred])
    run = metrics["runs"]["ls"]
    hard = get("logscore").eval_labels(base.rows, base.thresholds, old)
    assert hard.ndim == 1 and run["nll_labels"].startswith("hard bins")
    assert run["headline"]["nll"]["value"] == pytest.approx(
        -np.log(np.clip(p[np.arange(hard.size), hard], 1e-12, 1)).mean(), rel=1e-9
    )
    assert "hard_nll" not in run["headline"]
