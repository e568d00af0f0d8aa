"""The verdict never names a winner from non-finite figures (issue 10, item 2)."""

import json

import numpy as np

from vh.config import EvalConfig
from vh.eval import report as R
from vh.eval import verdict as V
from vh.eval.planted import planted
from vh.eval.predictions import save_predictions
from vh.eval.scoring import HeadScore

CFG = EvalConfig(n_boot=200)


def _write(report_dir, preds):
    (report_dir / "predictions").mkdir(parents=True)
    for p in preds:
        save_predictions(report_dir / "predictions" / f"{p.name}.npz", p)
    (report_dir / "eval.json").write_text(json.dumps({"runs": [p.name for p in preds]}))
    return report_dir


def _two_heads():
    return planted(
        n_rows=3000, n_runs=100, heads={"good": ("ordinal", 0.2, 1), "bad": ("ordinal", 0.9, 2)}
    )


def _poison_one_run(pred):
    """NaN probabilities on every state of the first test run (one game of the test split)."""
    rows = pred.rows["run_id"] == pred.rows["run_id"][0]
    pred.out["logits"] = pred.out["logits"].copy()
    pred.out["logits"][rows] = np.nan
    return int(rows.sum())


def test_clean_planted_heads_name_the_better_one(tmp_path):
    # the control: without the NaNs the better head wins, so the test below can fail
    metrics = R.build_report(_write(tmp_path, _two_heads()), CFG)
    assert metrics["winner"] == "good"
    assert "excluded" not in metrics["verdicts"][0]


def test_head_with_nan_probabilities_in_one_run_is_not_the_winner(tmp_path):
    preds = _two_heads()
    n_bad = _poison_one_run(preds[0])
    assert 0 < n_bad < preds[0].n
    metrics = R.build_report(_write(tmp_path, preds), CFG)
    v = metrics["verdicts"][0]
    assert v["excluded"] == [{"run": "good", "metric": "nll", "value": "nan"}]
    assert metrics["runs"]["good"]["headline"]["nll"]["value"] is None  # NaN is null in JSON
    assert metrics["winner"] == "bad"  # the only head left with finite figures
    assert v["families"][0]["ranking"] == ["bad"]
    md = (tmp_path / "report.md").read_text()
    assert "good is left out of the verdict: its test NLL is nan" in md
    assert "**Winner among the threshold heads (ordinal and tiles, scored on the same " in md
    assert ": bad**" in md and ": good**" not in md


def test_no_head_with_finite_figures_means_no_winner(tmp_path):
    preds = _two_heads()
    for p in preds:
        _poison_one_run(p)
    metrics = R.build_report(_write(tmp_path, preds), CFG)
    v = metrics["verdicts"][0]
    assert metrics["winner"] is None and v["families"] == [] and v["deciding"] is None
    assert [e["run"] for e in v["excluded"]] == ["good", "bad"]
    md = (tmp_path / "report.md").read_text()
    assert "**No clear winner among the threshold heads" in md
    assert "good is left out" in md and "bad is left out" in md


def _fake(name, **reps):
    """A HeadScore with given replicates (their mean is the point value)."""
    return HeadScore(
        name=name,
        kind="ordinal",
        family="ordinal",
        pool="threshold",
        primary="nll",
        baseline=False,
        headline={k: float(np.mean(v)) for k, v in reps.items()},
        reps=reps,
        figures={},
    )


def test_a_criterion_undefined_for_every_head_rules_none_out():
    rng = np.random.default_rng(0)
    nll = 0.5 + 0.01 * rng.normal(size=400)
    nan = np.full(400, np.nan)  # e.g. AUROC where no test state reaches the threshold
    a = _fake("a", nll=nll, auroc_top=nan, ece_high=nll * 0 + 0.02)
    b = _fake("b", nll=nll + 0.05, auroc_top=nan, ece_high=nll * 0 + 0.02)
    v = V.decide_pool([b, a], 0.95)
    assert "excluded" not in v and v["winner"] == "a"
    # non-finite for one head only, while finite for the other: that head is left out
    d = _fake("d", nll=nll + 0.05, auroc_top=np.full(400, 0.7), ece_high=np.full(400, 0.02))
    c = _fake("c", nll=nll - 0.05, auroc_top=np.full(400, 0.8), ece_high=np.full(400, np.inf))
    v = V.decide_pool([d, c], 0.95)
    assert v["excluded"] == [{"run": "c", "metric": "ece_high", "value": "inf"}]
    assert v["winner"] == "d"
