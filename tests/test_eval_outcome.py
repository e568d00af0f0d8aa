"""The outcome slice: by each run's final highest-tile bucket, predicted vs actual P(>= T).

Checked against a direct computation (a loop over buckets and thresholds), through the report
(the ``outcome`` figure, its table and its plot), on an ordinal and a tiles head.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vh.config import EvalConfig
from vh.eval import report as R
from vh.eval import slices as S
from vh.eval.planted import PLANTED_THRESHOLDS, planted
from vh.eval.predictions import save_predictions


def direct(q, highest, run_id, thresholds):
    """Per final bucket: states, runs, mean q and the actual rate, one threshold at a time."""
    t = list(thresholds)
    edges = [-np.inf] + t + [np.inf]  # bucket b: t_b <= highest < t_(b+1)
    out = []
    for b in range(len(t) + 1):
        rows = [i for i in range(len(highest)) if edges[b] <= highest[i] < edges[b + 1]]
        pred = [float(np.mean([q[i][k] for i in rows])) if rows else None for k in range(len(t))]
        act = [
            float(np.mean([highest[i] >= t[k] for i in rows])) if rows else None
            for k in range(len(t))
        ]
        out.append((len(rows), len({int(run_id[i]) for i in rows}), pred, act))
    return out


def test_outcome_table_matches_a_loop():
    rng = np.random.default_rng(0)
    T = np.array([4, 16, 64])
    highest = rng.choice([2, 4, 8, 16, 32, 128], size=300)
    run = rng.integers(0, 40, size=300)
    q = rng.random((300, 3))
    table = S.outcome_table(
        q=q,
        y=highest[:, None] >= T[None, :],
        bucket=np.searchsorted(T, highest, side="right"),
        run_code=run,
        thresholds=T,
    )
    assert [r["outcome"] for r in table] == ["< 4", "4-8", "16-32", ">= 64"]
    for row, (n, runs, pred, act) in zip(table, direct(q, highest, run, T), strict=True):
        assert (row["count"], row["runs"]) == (n, runs)
        np.testing.assert_allclose(row["predicted"], pred, rtol=1e-12)
        assert row["actual"] == act  # exactly 0 or 1: the bucket fixes which milestones
        np.testing.assert_allclose(row["bias"], np.subtract(pred, act), rtol=1e-12)
    # an empty bucket has no figures, not zeros
    empty = S.outcome_table(
        q=q[:2], y=np.ones((2, 3)), bucket=np.array([3, 3]), run_code=run[:2], thresholds=T
    )
    assert empty[0] == {
        "outcome": "< 4",
        "count": 0,
        "runs": 0,
        "predicted": [None] * 3,
        "actual": [None] * 3,
        "bias": [None] * 3,
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("outcome")
    preds = planted(
        n_rows=3000,
        n_runs=80,
        heads={"ord": ("ordinal", 0.4, 1), "til": ("tiles", 0.4, 2)},
    )
    (d / "predictions").mkdir()
    for p in preds:
        save_predictions(d / "predictions" / f"{p.name}.npz", p)
    (d / "eval.json").write_text(json.dumps({"runs": [p.name for p in preds]}))
    return d, preds, R.build_report(d, EvalConfig(n_boot=20))


def test_report_outcome_figures_match_a_direct_computation(report):
    d, preds, metrics = report
    for pred in preds:
        z = pred.out["logits"]
        if pred.kind == "ordinal":
            q = 1 / (1 + np.exp(-z))
        else:  # tiles: P(>= T_k) = the mass of the buckets above k
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            q = p[:, ::-1].cumsum(1)[:, ::-1][:, 1:]
        want = direct(q, pred.rows["highest_tile"], pred.rows["run_id"], PLANTED_THRESHOLDS)
        got = metrics["runs"][pred.name]["outcome"]
        assert len(got) == len(PLANTED_THRESHOLDS) + 1
        for row, (n, runs, pr, act) in zip(got, want, strict=True):
            assert (row["count"], row["runs"]) == (n, runs)
            if n:
                np.testing.assert_allclose(row["predicted"], pr, rtol=1e-9)
                assert row["actual"] == act
        assert (d / "plots" / f"{pred.name}_outcome.png").is_file()
    assert sum(r["count"] for r in metrics["runs"]["ord"]["outcome"]) == preds[0].n
    page = (d / "report.md").read_text()
    assert "ord by final outcome (the run's highest tile)" in page
    assert "P(>= 1024): predicted / actual (difference)" in page
    # the verdict names the leader's worst under- and over-estimate, as in its table
    ord_cells = [
        (b, r["outcome"], t)
        for r in metrics["runs"]["ord"]["outcome"]
        for t, b in zip(PLANTED_THRESHOLDS, r["bias"], strict=True)
        if b is not None
    ]
    leader = metrics["verdicts"][0]["winner"] or "ord"
    if leader == "ord":
        b, outcome, t = min(ord_cells)
        assert (
            f"ord most under-estimates P(>= {t}) for runs whose highest tile was {outcome}" in page
        )
        assert f"{b:+.3f}" in page
    assert "most over-estimates P(>=" in page
    html = (d / "index.html").read_text()
    assert html.count("by final outcome") >= 2
