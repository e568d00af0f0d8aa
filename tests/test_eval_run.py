"""`vh eval` end to end: real caches and `vh fit` run dirs -> predictions -> report; the CLI."""

import json
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vh.cache.fingerprint import make_fingerprint
from vh.cache.reader import open_cache
from vh.cache.writer import write_cache_from_arrays
from vh.cli import main
from vh.config import EvalConfig, load_config
from vh.errors import VhError
from vh.eval import run as E
from vh.eval.predictions import load_predictions
from vh.heads.api import fit, load_run

TILES = np.array([512, 1024, 2048, 4096])
PER = 10  # states per run
SETS = [
    "fit.target.thresholds=[1024, 2048, 4096]",
    "fit.train.wd=0",
    "fit.train.lr=0.05",
    "fit.train.batch_size=2048",
    "fit.train.epochs=5",
    "fit.train.patience=5",
    "fit.split.train=0.7",
    "fit.split.val=0.1",
    "fit.split.test=0.2",
]


def _dataset(rng, n_runs=600):
    """Runs with a skill z; the class (highest-tile bucket) is an ordinal draw from z."""
    z = rng.normal(size=n_runs)
    reach = 1 / (1 + np.exp(-(2.5 * z[:, None] - np.array([-1.0, 0.0, 1.0]))))
    cls = (rng.uniform(size=(n_runs, 1)) < reach).sum(1)
    run_id = np.repeat(np.arange(n_runs) + 100, PER)
    step = np.tile(np.arange(PER), n_runs)
    cols = {
        "run_id": run_id,
        "step_index": step,
        "step_fraction": (step / PER).astype(np.float32),
        "max_exp": np.minimum(step + 2, 11).astype(np.uint8),
        "return": (np.repeat(np.exp(7 + 0.9 * cls), PER) * (1 - step / PER)).astype(np.float32),
    }
    runs = {
        "id": np.arange(n_runs) + 100,
        "steps": np.full(n_runs, PER),
        "highest_tile": TILES[cls],
        "final_score": np.round(np.exp(7 + 0.9 * cls)),
        "seed": np.arange(n_runs),
    }
    return z, cols, runs


def _emb(rng, z, noise):
    """States see the run's skill through noise (the 'trunk' carries more of it)."""
    s = np.repeat(z, PER)[:, None]
    return np.concatenate(
        [s + noise * rng.normal(size=s.shape), rng.normal(size=(s.shape[0], 3))], axis=1
    ).astype(np.float16)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval_run")
    rng = np.random.default_rng(0)
    z, cols, table = _dataset(rng)
    trunk = write_cache_from_arrays(base / "trunk", _emb(rng, z, 0.3), cols, table, chunk_rows=2048)
    onehot_fp = make_fingerprint({"kind": "onehot"}, {}, {"dtype": "float16"})
    onehot = write_cache_from_arrays(
        base / "onehot",
        _emb(rng, z, 2.0),
        cols,
        table,
        attrs={
            "fingerprint": onehot_fp,
            "pooling": "onehot",
            "extract_config": {"trunk": "onehot"},
        },
        chunk_rows=2048,
    )
    quiet = lambda s: None  # noqa: E731
    dirs = {"probe": base / "probe", "baseline": base / "baseline", "tiles": base / "tiles"}
    fit(load_config(sets=SETS).fit, trunk, dirs["probe"], grid={"seed": (0, 1)}, log=quiet)
    fit(load_config(sets=SETS).fit, onehot, dirs["baseline"], log=quiet)
    # another family, on the baseline cache, with a sampler that keeps 5 states per run
    tiles = [
        *SETS,
        "fit.target.kind=tiles",
        "fit.sampler.kind=stratified",
        "fit.sampler.cap_per_run=5",
    ]
    fit(load_config(sets=tiles).fit, onehot, dirs["tiles"], log=quiet)
    out = base / "report"
    metrics = E.evaluate(
        [dirs["probe"], dirs["baseline"], dirs["tiles"]], out, EvalConfig(n_boot=200), log=quiet
    )
    dirs["trunk_cache"] = trunk
    return dirs, out, metrics


def test_predictions_are_the_heads_outputs_on_common_test_states(runs):
    dirs, out, _ = runs
    pred = load_predictions(out / "predictions" / "probe.npz")
    head = load_run(dirs["probe"])
    reader = open_cache(head.config["cache"]["path"])
    own = np.load(dirs["probe"] / "sampling.npz")["test_rows"]
    keys = np.stack([reader.column("run_id")[own], reader.column("step_index")[own]], 1)
    pos = {tuple(k): r for k, r in zip(keys.tolist(), own.tolist(), strict=True)}
    rows = np.array(
        [pos[(r, s)] for r, s in zip(pred.rows["run_id"], pred.rows["step_index"], strict=True)]
    )
    np.testing.assert_allclose(pred.out["logits"], head.logits(reader.take(rows)), rtol=1e-6)
    runs_tbl = reader.runs
    at = np.searchsorted(runs_tbl["id"], pred.rows["run_id"])
    assert np.array_equal(pred.rows["highest_tile"], runs_tbl["highest_tile"][at])
    assert np.array_equal(
        pred.rows["max_tile"], 2 ** reader.column("max_exp")[rows].astype(np.int64)
    )
    assert (
        pred.meta["member"]
        == json.loads((dirs["probe"] / "summary.json").read_text())["best_member"]
    )
    # the tiles run sampled 5 states per test run: only the states common to all remain
    assert pred.n == own.size // 2 and pred.meta["own_test_rows"] == own.size


def test_report_names_the_trunk_head_and_labels_the_baseline(runs):
    _, out, metrics = runs
    assert metrics["runs"]["baseline"]["baseline"] is True
    assert metrics["runs"]["probe"]["baseline"] is False
    assert metrics["winner"] == "probe"  # far more signal than the one-hot baseline
    md = (out / "report.md").read_text()
    assert "baseline (baseline)" in md and "tiles (baseline)" in md and "common to all runs" in md
    # the cited curves are the fit's: the copied metrics.jsonl's lowest validation NLL is the
    # member's best in the copied summary.json
    run = out / "runs" / "probe"
    summary = json.loads((run / "summary.json").read_text())
    lines = (run / "members" / "m001" / "metrics.jsonl").read_text().splitlines()
    val = [r for r in map(json.loads, lines) if r["split"] == "val"]
    best = min(val, key=lambda r: r["nll"])
    assert best["nll"] == pytest.approx(summary["members"]["m001"]["best_val_nll"], rel=1e-6)
    assert best["epoch"] == summary["members"]["m001"]["best_epoch"]
    png = (out / "plots" / "probe_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000  # a drawn plot, not a stub
    assert metrics["runs"]["probe"]["grid_val_nll"] and metrics["runs"]["tiles"]["temperature"]


def test_cli_rebuild_and_bad_input(runs, tmp_path):
    _, out, metrics = runs
    res = CliRunner().invoke(main, ["eval", "--rebuild", str(out), "--set", "eval.n_boot=200"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith(f"wrote report to {out}/index.html (3 runs; winner: probe)")
    res = CliRunner().invoke(main, ["eval", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1


def test_changed_cache_is_refused(runs, tmp_path):
    dirs, _, _ = runs
    import shutil

    run = tmp_path / "run"
    shutil.copytree(dirs["probe"], run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["cache"]["fingerprint"]["extract"]["emb_sha256"] = "0" * 64
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VhError) as e:
        E.evaluate([run], tmp_path / "r", EvalConfig(n_boot=10))
    assert "fingerprint" in e.value.line() or "differs" in e.value.line()


def test_runs_of_different_datasets_are_refused():
    def fake(name, inputs, keys):
        reader = types.SimpleNamespace(fingerprint={"inputs": inputs}, path=name)
        k = np.array(keys, dtype=E.KEY)
        return E.OpenRun(name, Path(name), None, reader, {}, k, np.arange(k.size))

    a = fake("a", {"steps.npy": 1}, [(1, 0), (1, 1), (2, 0)])
    common, notes = E.common_states([a, fake("b", {"steps.npy": 1}, [(1, 1), (2, 0), (3, 0)])])
    assert common.tolist() == [(1, 1), (2, 0)] and len(notes) == 2
    with pytest.raises(VhError) as e:
        E.common_states([a, fake("c", {"steps.npy": 2}, [(1, 0)])])
    assert e.value.field == "fingerprint.inputs"
    with pytest.raises(VhError, match="share no test state"):
        E.common_states([a, fake("d", {"steps.npy": 1}, [(9, 9)])])


def test_return_head_is_scored_in_raw_units(runs, tmp_path):
    from vh.heads.targets import soft_labels, target_values
    from vh.transforms import muzero_h_inv

    dirs, _, _ = runs
    run = tmp_path / "ret"
    sets = [*SETS, "fit.target.kind=return", "fit.target.return_bins=41"]
    fit(load_config(sets=sets).fit, dirs["trunk_cache"], run, log=lambda s: None)
    metrics = E.evaluate([run], tmp_path / "r", EvalConfig(n_boot=50), log=lambda s: None)
    pred = load_predictions(tmp_path / "r" / "predictions" / "ret.npz")
    head, reader = load_run(run), open_cache(dirs["trunk_cache"])
    rows = np.load(run / "sampling.npz")["test_rows"]  # one run: every own test state, in order
    p = head.predict(reader.take(rows))  # (n, C) probabilities over h(return) bins
    labels = target_values("return", reader, rows)  # the fit's label sources
    labels["y"] = soft_labels(labels["value"], head.spec)  # and its soft labels
    np.testing.assert_allclose(pred.out["ret"], labels["ret"], rtol=1e-6)
    np.testing.assert_allclose(
        pred.out["value"], muzero_h_inv(p @ head.spec.bin_centers), rtol=1e-4
    )
    nll = -(labels["y"] * np.log(np.clip(p, 1e-12, 1))).sum(1)  # CE with the fit's soft labels
    np.testing.assert_allclose(pred.out["nll_row"], nll, rtol=1e-4, atol=1e-6)
    h = metrics["runs"]["ret"]["headline"]
    assert abs(h["mae"]["value"] - np.mean(np.abs(pred.out["value"] - labels["ret"]))) < 1e-6
    assert metrics["verdicts"][0]["pool"] == "return" and metrics["winner"] == "ret"


def test_rebuild_uses_the_recorded_eval_settings(runs, tmp_path):
    # the report was made with n_boot=200 (not the default 1000): a plain --rebuild must reuse
    # the recorded settings and give the same intervals, byte for byte
    import shutil

    _, out, _ = runs
    copy = tmp_path / "report"
    shutil.copytree(out, copy)
    before = (copy / "report.md").read_text()
    res = CliRunner().invoke(main, ["eval", "--rebuild", str(copy)])
    assert res.exit_code == 0, res.output
    assert "(200 resamples)" in before
    assert (copy / "report.md").read_text() == before
    # an explicit change of the eval section still wins
    res = CliRunner().invoke(main, ["eval", "--rebuild", str(copy), "--set", "eval.n_boot=100"])
    assert res.exit_code == 0, res.output
    assert "(100 resamples)" in (copy / "report.md").read_text()
