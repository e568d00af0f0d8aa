"""Prior row, skill scores, temperature with an interval, the plain-English page (issue 12).

Planted data whose truth is known per run: each run has a latent skill z and reaches T_k with
probability ``sigmoid(2 z - c_k)``; the Bayes head predicts exactly that. The train split's base
rates come from separate planted train runs. Every figure is checked against numpy formulas
written here.
"""

import json
import re

import numpy as np
import pytest
from scipy import special

from vh.config import EvalConfig
from vh.eval import bootstrap as B
from vh.eval import calibration as C
from vh.eval import report as R
from vh.eval.predictions import Predictions, save_predictions
from vh.eval.tables import comparison_table

THR = np.array([1024, 2048, 4096, 8192])
CUTS = np.array([-1.5, -0.5, 0.5, 1.5])
CFG = EvalConfig(n_boot=300, seed=3)


def _runs(rng, n_runs, first_id):
    """Runs with true logits (R, K), their states (sorted by run, step) and outcomes."""
    z = rng.normal(size=n_runs)
    t = 2.0 * z[:, None] - CUTS  # (R, K) true logits of P(highest >= T_k)
    bucket = (rng.uniform(size=(n_runs, 1)) < special.expit(t)).sum(1)  # one draw per run
    tiles = np.r_[512, THR][bucket]
    sizes = rng.geometric(1 / 25, size=n_runs)  # unequal run lengths
    run = np.repeat(np.arange(n_runs), sizes)
    step = np.arange(run.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    rows = {
        "run_id": (run + first_id).astype(np.int64),
        "step_index": step.astype(np.int64),
        "step_fraction": step / sizes[run],
        "run_length": sizes[run].astype(np.int64),
        "max_tile": np.full(run.size, 256, dtype=np.int64),
        "highest_tile": tiles[run].astype(np.int64),
        "final_score": 1000.0 * (1 + bucket[run]),
    }
    return t[run], rows


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(11)
    true_t, rows = _runs(rng, 300, first_id=1)
    val_t, val_rows = _runs(rng, 300, first_id=1000)
    train_t, train_rows = _runs(rng, 600, first_id=5000)
    rates = (train_rows["highest_tile"][:, None] >= THR).mean(0)  # train base rates (K,)
    prior = np.log(rates) - np.log1p(-rates)
    val_y = (val_rows["highest_tile"][:, None] >= THR).astype(np.uint8)

    def head(name, test_logits, val_logits):
        return Predictions(
            name=name,
            kind="ordinal",
            thresholds=THR,
            medians=np.arange(1.0, 6.0),
            rows=rows,
            out={
                "logits": test_logits,
                "val_logits": val_logits,
                "val_y": val_y,
                "val_run_id": val_rows["run_id"],
                "prior_logits": prior,
            },
            meta={"arch": "planted"},
        )

    flat_test = np.broadcast_to(prior, true_t.shape).copy()
    flat_val = np.broadcast_to(prior, val_t.shape).copy()
    preds = [
        head("bayes", true_t, val_t),
        head("flat", flat_test, flat_val),  # predicts the base rates: no skill
        head("sharp", 2.0 * true_t, 2.0 * val_t),  # overconfident: true logits x 2
    ]
    return preds, rows, rates, val_y, val_rows


@pytest.fixture(scope="module")
def report(planted, tmp_path_factory):
    preds = planted[0]
    d = tmp_path_factory.mktemp("skill")
    (d / "predictions").mkdir()
    for p in preds:
        save_predictions(d / "predictions" / f"{p.name}.npz", p)
    (d / "eval.json").write_text(json.dumps({"runs": [p.name for p in preds]}))
    inputs = R.load_inputs(d)
    scored = R.score_all(inputs[0], inputs[1], CFG)
    metrics = R.write_report(d, scored, *inputs)
    return d, scored, metrics


def _bce(q, y):
    q = np.clip(q, 1e-12, 1 - 1e-12)
    return -(y * np.log(q) + (1 - y) * np.log(1 - q))


def _per_run(values, run_id):
    """Per-run sums of values and row counts (runs in sorted id order)."""
    _, code = np.unique(run_id, return_inverse=True)
    return np.bincount(code, values), np.bincount(code).astype(float)


# --------------------------------------------------------------------------- prior and skill


def test_prior_row_matches_direct_computation(planted, report):
    _, rows, rates, _, _ = planted
    bayes = next(s for s in report[1].scores if s.name == "bayes")
    Y = (rows["highest_tile"][:, None] >= THR).astype(float)
    q = np.broadcast_to(rates, Y.shape)
    np.testing.assert_allclose(bayes.prior.headline["nll"], _bce(q, Y).mean(), rtol=1e-9)
    np.testing.assert_allclose(bayes.prior.headline["brier"], ((q - Y) ** 2).mean(), rtol=1e-9)
    p = -np.diff(np.c_[np.ones(len(Y)), q, np.zeros(len(Y))], axis=1)  # bucket probabilities
    yb = Y.sum(1).astype(int)
    np.testing.assert_allclose(
        bayes.prior.headline["bucket_nll"], -np.log(p[np.arange(len(Y)), yb]).mean(), rtol=1e-9
    )
    # a constant cannot rank: AUROC exactly one half
    assert bayes.prior.headline["auroc_top"] == pytest.approx(0.5)


def test_bayes_head_nll_is_the_bayes_nll(planted, report):
    """The Bayes head's test NLL estimates the mean binary entropy of the true probabilities
    (its expectation), within sampling error."""
    preds, rows, *_ = planted
    bayes = next(s for s in report[1].scores if s.name == "bayes")
    p = special.expit(preds[0].out["logits"])
    entropy = _bce(p, p).mean()  # H(p) = E[BCE] under the truth
    lo, hi = B.interval(bayes.reps["nll"], CFG.ci)
    assert abs(bayes.headline["nll"] - entropy) < 2 * (hi - lo)


def test_skill_and_its_paired_replicates_match_numpy(planted, report):
    preds, rows, rates, _, _ = planted
    Y = (rows["highest_tile"][:, None] >= THR).astype(float)
    head = _bce(special.expit(preds[0].out["logits"]), Y).mean(1)
    prior = _bce(np.broadcast_to(rates, Y.shape), Y).mean(1)
    s = next(s for s in report[1].scores if s.name == "bayes")
    np.testing.assert_allclose(s.headline["nll_skill"], 1 - head.mean() / prior.mean(), rtol=1e-9)
    # paired: the same resample of runs weighs the head's rows and the prior's alike
    w = B.draw_weights(n_runs=np.unique(rows["run_id"]).size, n_boot=CFG.n_boot, seed=CFG.seed)
    h_r, _ = _per_run(head, rows["run_id"])
    p_r, _ = _per_run(prior, rows["run_id"])
    want = 1 - (w @ h_r) / (w @ p_r)
    np.testing.assert_allclose(np.asarray(s.reps["nll_skill"]), want, rtol=1e-9)
    # the interval's width against the jackknife standard error over runs (numpy)
    jack = 1 - (h_r.sum() - h_r) / (p_r.sum() - p_r)
    se = np.sqrt((jack.size - 1) / jack.size * ((jack - jack.mean()) ** 2).sum())
    lo, hi = B.interval(s.reps["nll_skill"], CFG.ci)
    assert lo < s.headline["nll_skill"] < hi
    assert 0.7 < (hi - lo) / (2 * 1.96 * se) < 1.4
    assert lo > 0 and s.figures["no_skill"] is False
    # Brier skill likewise
    hb = ((special.expit(preds[0].out["logits"]) - Y) ** 2).mean(1)
    pb = ((np.broadcast_to(rates, Y.shape) - Y) ** 2).mean(1)
    np.testing.assert_allclose(s.headline["brier_skill"], 1 - hb.mean() / pb.mean(), rtol=1e-9)


def test_no_skill_head_is_flagged(report):
    d, scored, metrics = report
    flat = next(s for s in scored.scores if s.name == "flat")
    assert flat.headline["nll_skill"] == pytest.approx(0.0, abs=1e-12)
    assert flat.figures["no_skill"] is True
    assert metrics["runs"]["flat"]["no_skill"] is True
    assert metrics["runs"]["bayes"]["no_skill"] is False
    header, rows = comparison_table(scored.scores, scored.top, {}, CFG.ci)
    flag = header.index("skill over the base rates")
    by_run = {r[0]: r for r in rows}
    assert by_run["flat"][flag] == "no skill over the base rates"
    assert by_run["bayes"][flag] == "skill"
    md = (d / "report.md").read_text()
    assert "**flat: no skill over the base rates**" in md
    # one prior row (all three heads share the base rates), marked as such
    priors = [r for r in rows if r[1].startswith("prior")]
    assert len(priors) == 1 and priors[0][0] == "train base rates (no skill)"


def test_headline_column_is_the_bucket_nll_and_losses_are_named(report):
    _, scored, _ = report
    header, _ = comparison_table(scored.scores, scored.top, {}, CFG.ci)
    assert header[4] == "bucket NLL (all heads)"
    assert "ordinal loss: mean BCE per threshold" in header
    assert "NLL" not in header  # no bare NLL column mixing scales


# --------------------------------------------------------------------------- temperature


def test_temperature_replicates_are_refits_on_resampled_runs(planted):
    preds, *_, val_y, val_rows = planted
    z = preds[2].out["val_logits"]
    reps = C.temperature_replicates(
        logits=z, y=val_y, kind="binary", run_id=val_rows["run_id"], n_boot=4, seed=5
    )
    w = B.draw_weights(n_runs=np.unique(val_rows["run_id"]).size, n_boot=4, seed=5)
    _, code = np.unique(val_rows["run_id"], return_inverse=True)
    for b in range(4):
        take = np.repeat(np.arange(code.size), w[b][code].astype(int))  # rows of drawn runs
        direct = C.fit_temperature(logits=z[take], y=val_y[take], kind="binary")
        assert reps[b] == pytest.approx(direct, rel=2e-3)


def test_overconfident_head_gets_t_near_2(report):
    d, scored, _ = report
    temp = next(s for s in scored.scores if s.name == "sharp").figures["temperature"]
    assert temp["T"] == pytest.approx(2.0, rel=0.1)
    assert temp["lo"] > 1 and temp["recommended"] is True
    assert temp["val_nll_after"] < temp["val_nll_before"]


def test_calibrated_head_is_told_scaling_does_not_help(report):
    d, scored, _ = report
    temp = next(s for s in scored.scores if s.name == "bayes").figures["temperature"]
    assert temp["lo"] < 1 < temp["hi"] and temp["recommended"] is False
    md = (d / "report.md").read_text()
    assert "Temperature scaling of bayes" in md and "scaling does not help" in md
    assert "(not recommended: no fix)" in md  # the "after" column is not sold as a fix


# --------------------------------------------------------------------------- the first page


def test_report_opens_with_plain_english_bullets_linked_to_sections(report):
    d, scored, _ = report
    md = (d / "report.md").read_text()
    first = md.split("## Comparison across runs")[0]
    assert first.startswith("# vh eval report\n\n## In plain English\n")
    bullets = [line for line in first.splitlines() if line.startswith("- ")]
    assert 3 <= len(bullets) <= 10
    headings = {
        re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.*)$", md, flags=re.M)
    }
    for b in bullets:
        links = re.findall(r"\]\(#([^)]*)\)", b)
        assert links and all(a in headings for a in links), b
    assert any("bayes" in b and "Co-train" in b for b in bullets)  # the winner to co-train
    assert any("flat" in b and "base rates" in b for b in bullets)
    assert any("does not help" in b for b in bullets) or any("T = 2" in b for b in bullets)
    html = (d / "index.html").read_text()
    assert 'id="comparison-across-runs"' in html and 'href="#comparison-across-runs"' in html
    assert "<ul><li>" in html


# --------------------------------------------------------------------------- export with T


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One small probe ordinal run on a tiny trunk's cache (as tests/test_export.py)."""
    import dataclasses

    from conftest import export_study

    from vh.heads.api import fit

    root = tmp_path_factory.mktemp("export-t")
    cfg = export_study(root)
    fcfg = dataclasses.replace(cfg.fit, head=dataclasses.replace(cfg.fit.head, arch="probe"))
    fit(fcfg, root / "cache", root / "run", log=lambda s: None)
    return root


def test_export_folds_the_temperature_into_the_probe(fitted):
    import torch

    from vh.cache.reader import open_cache
    from vh.export import export_head, recommended_temperature
    from vh.extract.trunk import load_trunk
    from vh.heads.api import load_run

    root = fitted
    out = export_head(root / "run", root / "trunk", root / "init-t2", temperature="2.5")
    block = json.loads((out / "config.json").read_text())["value_head"]
    assert block["temperature"] == 2.5
    rh = load_run(root / "run")
    emb = open_cache(root / "cache").read_rows(0, 500).astype(np.float32)
    with torch.inference_mode():
        z = load_trunk(out).model.value_head(torch.from_numpy(emb)).numpy()
    # the exported head's probabilities are the scaled JAX head's
    np.testing.assert_allclose(special.expit(z), special.expit(rh.logits(emb) / 2.5), atol=1e-5)
    # auto: folded exactly when the recommendation says so
    rec = recommended_temperature(rh)
    auto = export_head(root / "run", root / "trunk", root / "init-auto", temperature="auto")
    block = json.loads((auto / "config.json").read_text())["value_head"]
    if rec["recommended"]:
        assert block["temperature"] == pytest.approx(rec["T"])
    else:
        assert "temperature" not in block


@pytest.mark.parametrize("bad", ["banana", "0", "-1", "nan", "inf"])
def test_cli_export_refuses_a_bad_temperature(fitted, bad, tmp_path):
    from click.testing import CliRunner

    from vh.cli import main

    r = CliRunner().invoke(
        main,
        [
            "export",
            str(fitted / "run"),
            "--init",
            str(fitted / "trunk"),
            "--out",
            str(tmp_path / "x"),
            "--temperature",
            bad,
        ],
    )
    assert r.exit_code != 0
    assert r.output.strip().splitlines()[-1].startswith("error: ")
    assert "--temperature" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x").exists()
