"""Labels and temperature scaling, each implemented once in eval, against plain references."""

import json

import numpy as np
from scipy import special

from vh.config import EvalConfig
from vh.eval import calibration as C
from vh.eval import report as R
from vh.eval.labels import class_labels, reached, score_bin, tile_bucket
from vh.eval.planted import planted
from vh.eval.predictions import Predictions, save_predictions


def test_labels_match_a_loop_over_thresholds():
    T = np.array([4, 16, 64])
    tiles = np.array([2, 4, 8, 16, 32, 64, 128])
    want = np.array([[int(h >= t) for t in T] for h in tiles])  # by hand, one pair at a time
    assert np.array_equal(reached(tiles, T), want.astype(bool))
    assert np.array_equal(tile_bucket(tiles, T), want.sum(1))  # thresholds reached = bucket
    ordinal = class_labels("ordinal", thresholds=T, highest_tile=tiles, final_score=tiles)
    assert ordinal.dtype == np.uint8 and np.array_equal(ordinal, want)
    edges = np.log1p(np.array([0.0, 10.0, 100.0, 1000.0]))
    scores = np.array([0.0, 9.0, 10.0, 99.0, 500.0, 5000.0])
    # bins [0, 10), [10, 100), [100, 1000]; scores past the last edge go to the last bin
    assert score_bin(scores, edges).tolist() == [0, 0, 1, 1, 2, 2]


def test_logscore_temperature_matches_an_independent_fit(tmp_path):
    base = planted(n_rows=2000, n_runs=60, heads={"o": ("ordinal", 0.3, 1)}, val_rows=800)[0]
    rng = np.random.default_rng(3)
    edges = np.linspace(5, 14, 17)
    centres = (edges[1:] + edges[:-1]) / 2

    def logits(final_score):  # overconfident by a factor 3 on purpose
        z = np.log1p(final_score) + 0.5 * rng.normal(size=final_score.size)
        return -3.0 * (centres - z[:, None]) ** 2

    val_score = np.exp(7.0 + 0.8 * rng.integers(0, 7, size=800))
    val_y = class_labels(
        "logscore",
        thresholds=base.thresholds,
        highest_tile=None,
        final_score=val_score,
        bin_edges=edges,
    )
    out = {"logits": logits(base.rows["final_score"]), "bin_edges": edges}
    out |= {"val_logits": logits(val_score), "val_y": val_y}
    pred = Predictions("ls", "logscore", base.thresholds, base.medians, base.rows, out)
    (tmp_path / "predictions").mkdir()
    save_predictions(tmp_path / "predictions" / "ls.npz", pred)
    (tmp_path / "eval.json").write_text(json.dumps({"runs": ["ls"]}))
    temp = R.build_report(tmp_path, EvalConfig(n_boot=20))["runs"]["ls"]["temperature"]

    t = C.fit_temperature(logits=out["val_logits"], y=val_y, kind="categorical")
    y = np.clip(np.searchsorted(edges, np.log1p(base.rows["final_score"]), "right") - 1, 0, 15)
    p = special.softmax(out["logits"] / t, axis=1)
    assert temp["T"] == t and temp["T"] > 1.0  # the overconfident head is cooled
    assert temp["val_rows"] == 800
    assert abs(temp["after"]["nll"] - np.mean(-np.log(p[np.arange(y.size), y]))) < 1e-9
    assert temp["after"]["nll"] < temp["before"]["nll"]
