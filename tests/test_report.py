"""The report: planted winners, ties, the rules, files only, bad input, HTML in Chromium."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from scipy import stats as ss
from sklearn import metrics as skm

from vh.config import EvalConfig
from vh.errors import VhError
from vh.eval import bootstrap as B
from vh.eval import calibration as C
from vh.eval import report as R
from vh.eval import slices as S
from vh.eval import verdict as V
from vh.eval.formatting import num
from vh.eval.inputs import load_inputs
from vh.eval.planted import planted
from vh.eval.predictions import Predictions, load_predictions, save_predictions
from vh.eval.scoring import HeadScore

CFG = EvalConfig(n_boot=200)
_T_GRID = np.arange(0.5, 2.5, 0.01)  # temperatures scanned by the independent T check


def _write(report_dir, preds, runs=None):
    (report_dir / "predictions").mkdir(parents=True, exist_ok=True)
    for p in preds:
        save_predictions(report_dir / "predictions" / f"{p.name}.npz", p)
    (report_dir / "eval.json").write_text(json.dumps({"runs": [p.name for p in preds]}))
    for name, files in (runs or {}).items():
        for rel, text in files.items():
            (report_dir / "runs" / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (report_dir / "runs" / name / rel).write_text(text)
    return report_dir


def _run_files(member_nlls):
    curves = "\n".join(
        json.dumps(
            {
                "epoch": e,
                "step": 10 * e,
                "split": s,
                "loss": 1 / (e + 1),
                "nll": 1 / (e + 1),
                "lr": 1e-3,
                "time": e,
            }
        )
        for e in range(4)
        for s in ("train", "val")
    )
    summary = {
        "best_member": "m000",
        "arch": "probe",
        "n_params": 1234,
        "train_rows": 9000,
        "val_rows": 500,
        "members": {f"m{i:03d}": {"best_val_nll": v} for i, v in enumerate(member_nlls)},
    }
    config = {
        "fit": {"split": {"seed": 0}, "sampler": {"kind": "all"}},
        "grid": [{"name": "m000", "lr": 1e-3, "wd": 0.0, "seed": 0}],
    }
    return {
        "config.json": json.dumps(config),
        "summary.json": json.dumps(summary),
        "members/m000/metrics.jsonl": curves,
    }


@pytest.fixture(scope="module")
def planted_report(tmp_path_factory):
    preds = planted(
        n_rows=6000,
        n_runs=200,
        heads={"good": ("ordinal", 0.2, 1), "bad": ("ordinal", 0.9, 2), "tiles": ("tiles", 0.6, 3)},
    )
    d = _write(tmp_path_factory.mktemp("rep"), preds, {"good": _run_files([0.4, 0.41])})
    return d, R.build_report(d, CFG), preds


# --------------------------------------------------------------------------- verdicts


def test_planted_better_head_is_named(planted_report):
    d, metrics, _ = planted_report
    assert metrics["winner"] == "good"
    md = (d / "report.md").read_text()
    assert "**Winner among the threshold heads" in md and ": good**" in md
    fam = metrics["verdicts"][0]["families"][0]
    step = fam["cascade"]["steps"][0]
    assert step["criterion"] == "nll" and step["decided"] and step["hi"] < 0
    assert f"[{num(step['lo'])}, {num(step['hi'])}]" in md  # the CI is cited


def test_identical_heads_give_no_clear_winner(tmp_path):
    preds = planted(
        n_rows=3000, n_runs=100, heads={"a": ("ordinal", 0.5, 7), "b": ("ordinal", 0.5, 7)}
    )
    metrics = R.build_report(_write(tmp_path, preds), EvalConfig(n_boot=100))
    assert metrics["winner"] is None
    assert "No clear winner" in (tmp_path / "report.md").read_text()
    steps = metrics["verdicts"][0]["families"][0]["cascade"]["steps"]
    assert [s["criterion"] for s in steps] == ["nll", "auroc_top", "ece_high"]
    assert all(s["lo"] == 0 and s["hi"] == 0 for s in steps)


def test_too_few_test_runs_declare_no_winner(tmp_path):
    # the same planted contest as above (good clearly beats bad) on 12 test runs only: below
    # MIN_RUNS_FOR_INTERVALS the intervals under-cover, so no winner is declared on them
    assert B.MIN_RUNS_FOR_INTERVALS > 12
    preds = planted(
        n_rows=1200, n_runs=12, heads={"good": ("ordinal", 0.1, 1), "bad": ("ordinal", 1.5, 2)}
    )
    metrics = R.build_report(_write(tmp_path, preds), EvalConfig(n_boot=100))
    v = metrics["verdicts"][0]
    assert metrics["winner"] is None and v["winner"] is None
    assert v["provisional_winner"] == "good" and v["too_few_runs"] == 12
    md = (tmp_path / "report.md").read_text()
    assert "only 12 test runs (fewer than 20)" in md and "good would lead (provisional)" in md


def _fake(name, kind="ordinal", **reps):
    """A HeadScore with given replicates (their mean is the point value)."""
    return HeadScore(
        name=name,
        kind=kind,
        family=kind,
        pool="threshold",
        primary="nll",
        baseline=False,
        headline={k: float(v.mean()) for k, v in reps.items()},
        reps=reps,
        figures={},
    )


def test_rules_fall_through_to_auroc_then_stability():
    rng = np.random.default_rng(0)
    nll = 0.5 + 0.01 * rng.normal(size=500)
    auc = 0.8 + 0.01 * rng.normal(size=500)
    ece = 0.02 + 0.001 * rng.normal(size=500)
    a = _fake("a", nll=nll, auroc_top=auc + 0.02, ece_high=ece)
    b = _fake("b", nll=nll.copy(), auroc_top=auc, ece_high=ece.copy())
    v = V.decide_pool([b, a], 0.95)
    assert v["winner"] == "a"
    assert [s["criterion"] for s in v["families"][0]["cascade"]["steps"]] == ["nll", "auroc_top"]
    # equal on every interval: the grid spread decides only when one is at most half the other
    a, b = (_fake(n, nll=nll, auroc_top=auc, ece_high=ece) for n in "ab")
    a.figures["grid_val_nll"], b.figures["grid_val_nll"] = [0.40, 0.41], [0.40, 0.46]
    assert V.decide_pool([a, b], 0.95)["winner"] == "a"
    b.figures["grid_val_nll"] = [0.40, 0.415]
    assert V.decide_pool([a, b], 0.95)["winner"] is None


def test_tiles_family_uses_top_pm1_after_nll():
    rng = np.random.default_rng(1)
    nll = 1.5 + 0.01 * rng.normal(size=300)
    w1 = 0.6 + 0.01 * rng.normal(size=300)
    a, b = _fake("a", "tiles", nll=nll, within1=w1), _fake("b", "tiles", nll=nll, within1=w1 + 0.05)
    v = V.decide_pool([a, b], 0.95)
    assert v["winner"] == "b" and v["deciding"]["criterion"] == "within1"


# --------------------------------------------------------------------------- figures


def test_headline_figures_match_independent_references(planted_report):
    _, metrics, preds = planted_report
    good = next(p for p in preds if p.name == "good")
    q = 1 / (1 + np.exp(-good.out["logits"]))
    Y = (good.rows["highest_tile"][:, None] >= good.thresholds).astype(int)
    h = metrics["runs"]["good"]["headline"]
    # mean BCE over rows and thresholds = log_loss over the flattened pairs
    assert abs(h["nll"]["value"] - skm.log_loss(Y.ravel(), q.ravel())) < 1e-9
    assert abs(h["auroc@16384"]["value"] - skm.roc_auc_score(Y[:, 4], q[:, 4])) < 1e-9
    # expected score = sum_i p_i m_i over the buckets (the planted head is monotone)
    p = np.diff(np.c_[np.ones(len(q)), q, np.zeros(len(q))], axis=1) * -1
    e = p @ good.medians
    assert abs(h["spearman_score"]["value"] - ss.spearmanr(e, good.rows["final_score"])[0]) < 1e-9
    assert abs(h["pearson_score"]["value"] - ss.pearsonr(e, good.rows["final_score"])[0]) < 1e-9
    for k in ("nll", "auroc@16384", "within1"):
        assert h[k]["lo"] <= h[k]["value"] <= h[k]["hi"]
    # ECE at 32768: uniform bins of width 1/15 (the last one closed), |sum p - sum y| / n
    y32, q32 = Y[:, -1], q[:, -1]
    cell = np.minimum((q32 * CFG.ece_bins).astype(int), CFG.ece_bins - 1)
    gap = np.bincount(cell, q32 - y32, CFG.ece_bins)
    assert abs(h["ece@32768"]["value"] - np.abs(gap).sum() / len(q32)) < 1e-9
    assert 0 <= h["ece@32768"]["lo"] < h["ece@32768"]["hi"] <= 1
    per_t = metrics["runs"]["good"]["per_threshold"]
    assert [r["threshold"] for r in per_t] == list(good.thresholds)
    # T minimises the validation NLL: scan T directly with sklearn's log loss
    val_q = 1 / (1 + np.exp(-good.out["val_logits"][None] / _T_GRID[:, None, None]))
    val_y = np.broadcast_to(good.out["val_y"], val_q.shape[1:]).ravel()
    scan = [skm.log_loss(val_y, vq.ravel(), labels=[0, 1]) for vq in val_q]
    t_best = _T_GRID[int(np.argmin(scan))]
    assert abs(metrics["runs"]["good"]["temperature"]["T"] - t_best) <= 0.02
    tables = metrics["runs"]["good"]["slices"]
    assert set(tables) == {"phase", "length", "tile"}
    for table in tables.values():
        assert sum(r["count"] for r in table) == good.n


def test_report_rebuilds_identically_from_files(planted_report, tmp_path):
    d, metrics, _ = planted_report
    copy = tmp_path / "copy"
    shutil.copytree(d / "predictions", copy / "predictions")
    shutil.copytree(d / "runs", copy / "runs")
    shutil.copy(d / "eval.json", copy / "eval.json")
    again = R.build_report(copy, CFG)
    strip = lambda m: {k: v for k, v in m.items() if k != "created"}  # noqa: E731
    assert strip(again) == strip(json.loads(json.dumps(metrics)))


def test_html_is_self_contained(planted_report):
    d, _, _ = planted_report
    page = (d / "index.html").read_text()
    pngs = sorted((d / "plots").glob("*.png"))
    assert len(pngs) >= 12  # reliability, confusion, PR per head; curves; slices; intervals
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert "<script" not in page and not re.search(r"(src|href)=\"(http|//)", page)
    assert page.count("<table") >= 1 + 3 * 4 and "Winner among" in page


def test_return_and_logscore_heads_are_scored(tmp_path):
    base = planted(n_rows=2000, n_runs=60, heads={"o": ("ordinal", 0.3, 1)})[0]
    rng = np.random.default_rng(0)
    ret = base.rows["final_score"] * (1 - base.rows["step_fraction"])
    value = ret * np.exp(0.2 * rng.normal(size=ret.size))
    edges = np.linspace(5, 14, 33)
    centres = (edges[1:] + edges[:-1]) / 2
    z = np.log1p(base.rows["final_score"]) + 0.3 * rng.normal(size=ret.size)
    preds = [
        Predictions(
            "ret",
            "return",
            base.thresholds,
            base.medians,
            base.rows,
            {"value": value, "ret": ret},
            {"encoding": "scalar"},
        ),
        Predictions(
            "ls",
            "logscore",
            base.thresholds,
            base.medians,
            base.rows,
            {"logits": -((centres - z[:, None]) ** 2) / 0.5, "bin_edges": edges},
        ),
    ]
    metrics = R.build_report(_write(tmp_path, preds), EvalConfig(n_boot=50))
    h = metrics["runs"]["ret"]["headline"]
    assert abs(h["mae"]["value"] - np.mean(np.abs(value - ret))) < 1e-9
    assert abs(h["rmse"]["value"] - np.sqrt(np.mean((value - ret) ** 2))) < 1e-9
    assert abs(h["spearman"]["value"] - ss.spearmanr(value, ret)[0]) < 1e-9
    late = metrics["runs"]["ret"]["slices"]["phase"][2]
    mask = base.rows["step_fraction"] >= 0.75
    assert late["count"] == mask.sum()
    assert abs(late["rmse"] - np.sqrt(np.mean((value - ret)[mask] ** 2))) < 1e-9
    assert metrics["runs"]["ls"]["headline"]["within1"]["value"] > 0.5
    assert (tmp_path / "plots" / "ret_games.png").is_file()
    assert [v["pool"] for v in metrics["verdicts"]] == ["logscore", "return"]


# --------------------------------------------------------------------------- bad input


def test_bad_predictions_files_name_file_and_field(planted_report, tmp_path):
    d, _, preds = planted_report
    src = d / "predictions" / "good.npz"
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(VhError) as e:
        load_predictions(trunc)
    assert e.value.path == str(trunc)

    def rewrite(path, drop=(), **change):
        with np.load(src) as data:
            arrays = {k: data[k] for k in data.files if k not in drop}
        arrays.update(change)
        np.savez(path, **arrays)
        return path

    cases = [
        (rewrite(tmp_path / "a.npz", drop=("row_run_id",)), "row_run_id"),
        (rewrite(tmp_path / "b.npz", kind=np.array("magic")), "kind"),
        (rewrite(tmp_path / "c.npz", out_logits=np.zeros((3, 6))), "out_logits"),
        (rewrite(tmp_path / "d.npz", meta=np.array("{oops")), "meta"),
    ]
    for path, field in cases:
        with pytest.raises(VhError) as e:
            load_predictions(path)
        assert e.value.field == field and e.value.path == str(path)


def test_misaligned_or_missing_predictions_are_refused(tmp_path):
    a = planted(n_rows=500, n_runs=20, heads={"a": ("ordinal", 0.5, 1)})[0]
    b = planted(n_rows=500, n_runs=20, heads={"b": ("ordinal", 0.5, 1)}, seed=9)[0]
    with pytest.raises(VhError) as e:
        load_inputs(_write(tmp_path / "x", [a, b]))
    assert e.value.field in ("row_run_id", "row_step_index")
    with pytest.raises(VhError, match="no predictions"):
        R.build_report(tmp_path / "empty", CFG)


# --------------------------------------------------------------------------- pieces


def test_temperature_recovers_a_planted_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(20000, 3))
    z = np.sort(z, axis=1)[:, ::-1]  # ordered threshold logits
    y = (rng.uniform(size=z.shape) < 1 / (1 + np.exp(-z / 2.0))).astype(np.uint8)
    t = C.fit_temperature(logits=z, y=y, kind="binary")
    assert abs(t - 2.0) < 0.1
    q = 1 / (1 + np.exp(-z / t))  # sigmoid of the scaled logits
    assert np.all(np.diff(q, axis=1) <= 0)  # the thresholds stay ordered
    nll = lambda tt: C.scaled_nll(logits=z, y=y, temperature=tt, kind="binary")  # noqa: E731
    assert nll(t) <= min(nll(1.0), nll(t * 1.05), nll(t / 1.05))
    logits = rng.normal(0, 2, size=(20000, 5))
    p = np.exp(logits / 0.5) / np.exp(logits / 0.5).sum(1, keepdims=True)  # softmax(z / T)
    cls = (rng.uniform(size=(20000, 1)) > np.cumsum(p, 1)).sum(1)
    assert abs(C.fit_temperature(logits=logits, y=cls, kind="categorical") - 0.5) < 0.05


def test_slices_count_rows_and_runs():
    run = np.repeat(np.arange(9), np.arange(1, 10))  # run r has r + 1 states
    frac = np.concatenate([np.arange(k) / k for k in range(1, 10)])
    sl = S.make_slices(
        step_fraction=frac,
        run_id=run,
        run_length=np.repeat(np.arange(1, 10), np.arange(1, 10)),
        max_tile=np.full(run.size, 2048),
        thresholds=np.array([1024, 4096]),
    )
    for fam in sl.values():
        masks = np.stack([m for _, m in fam])
        assert np.all(masks.sum(0) == 1)  # a partition of the rows
    lengths = [int(m.sum()) for _, m in sl["length"]]
    assert lengths == [1 + 2 + 3, 4 + 5 + 6, 7 + 8 + 9]  # three runs per tertile
    rows = S.slice_table(sl["length"], B.run_index(run).code, {"x": (frac, "mean")})
    assert [r["runs"] for r in rows] == [3, 3, 3]
    assert [m.sum() for _, m in sl["tile"]] == [0, run.size, 0]


def test_slice_tables_match_a_direct_computation():
    import statistics

    rng = np.random.default_rng(7)
    lengths = rng.integers(3, 40, 30)
    run = np.repeat(rng.permutation(100)[:30], lengths)
    step = np.concatenate([np.arange(k) for k in lengths])
    length = np.repeat(lengths, lengths)
    frac = step / length
    frac[-1] = 1.0  # a state exactly at the end belongs to "late"
    tile = 2 ** rng.integers(7, 14, run.size)
    thresholds = np.array([1024, 2048, 8192])
    x, e = rng.normal(size=run.size), rng.normal(size=run.size)
    sl = S.make_slices(
        step_fraction=frac, run_id=run, run_length=length, max_tile=tile, thresholds=thresholds
    )
    code = B.run_index(run).code
    tables = {
        fam: S.slice_table(v, code, {"x": (x, "mean"), "rmse": (e**2, "root_mean")})
        for fam, v in sl.items()
    }
    # direct: membership rules written out row by row
    a, b = statistics.quantiles(lengths.tolist(), n=3, method="inclusive")
    rules = {
        "phase": [
            lambda i: frac[i] < 0.25,
            lambda i: 0.25 <= frac[i] < 0.75,
            lambda i: frac[i] >= 0.75,
        ],
        "length": [lambda i: length[i] <= a, lambda i: a < length[i] <= b, lambda i: length[i] > b],
        "tile": [
            lambda i: tile[i] < 1024,
            lambda i: 1024 <= tile[i] < 2048,
            lambda i: 2048 <= tile[i] < 8192,
            lambda i: tile[i] >= 8192,
        ],
    }
    assert [r["slice"] for r in tables["tile"]] == [
        "tile < 1024",
        "tile 1024",
        "tile 2048-4096",
        "tile >= 8192",
    ]
    for fam, preds in rules.items():
        assert len(tables[fam]) == len(preds)
        for row, rule in zip(tables[fam], preds, strict=True):
            rows = [i for i in range(run.size) if rule(i)]
            assert row["count"] == len(rows) and row["runs"] == len({run[i] for i in rows})
            if rows:
                assert row["x"] == pytest.approx(sum(x[i] for i in rows) / len(rows), abs=1e-12)
                rmse = (sum(e[i] ** 2 for i in rows) / len(rows)) ** 0.5
                assert row["rmse"] == pytest.approx(rmse, abs=1e-12)
            else:
                assert row["x"] is None and row["rmse"] is None


# --------------------------------------------------------------------------- Chromium


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_html_renders_in_headless_chromium(planted_report, tmp_path):
    from matplotlib import image

    d, _, _ = planted_report
    shot = tmp_path / "shot.png"
    res = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            "--enable-logging=stderr",
            "--v=0",
            f"file://{d / 'index.html'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln]
    assert not console, console
    img = image.imread(shot)[..., :3]  # (H, W, 3) in [0, 1]
    assert img.shape[:2] == (2000, 1280)
    ink = np.any(img < 0.9, axis=2)  # text, table borders, plots
    colour = img.max(axis=2) - img.min(axis=2) > 0.3  # the plots' coloured lines and points
    assert ink.mean() > 0.01 and colour.sum() > 200


def test_no_prior_row_without_train_base_rates(planted_report):
    """Predictions without ``out_prior_logits`` (made by hand or an older vh) get no prior
    row and no skill figures, and the first page still opens the report."""
    d, metrics, _ = planted_report
    assert all("nll_skill" not in r["headline"] for r in metrics["runs"].values())
    md = (d / "report.md").read_text()
    assert "train base rates (no skill)" not in md
    assert md.startswith("# vh eval report\n\n## In plain English\n\n- ")
    assert "| bucket NLL (all heads) |" in md
