"""The eval report, built only from files: predictions and copies of the run dirs.

Inputs (written by :func:`vh.eval.run.evaluate`, or by hand for planted data)::

    REPORT_DIR/predictions/<name>.npz   one per head, all row-aligned on the same test states
    REPORT_DIR/runs/<name>/             copied config.json, summary.json, sampling_manifest.csv,
                                        members/<m>/metrics.jsonl and summary.json
    REPORT_DIR/eval.json                how the predictions were made: runs, notes, config

Outputs: ``metrics.json`` (every figure), ``report.md``, ``index.html`` (self-contained: images
embedded, no scripts), ``plots/*.png``.

Heads of every family are scored on the same rows and the same thresholds: an ordinal head's
``q_k = P(highest >= T_k)`` gives bucket probabilities, a tiles head's bucket probabilities give
``q_k``. Intervals are bootstrap percentile intervals resampled by run (:mod:`.bootstrap`).

The winner follows the seed's rules, each step decided only when the paired bootstrap interval
of the difference excludes zero: inside a family (same target and thresholds or bins) the best
test NLL; if the NLL interval does not separate the two best, AUROC at the top thresholds
(>= 16384 and >= 32768) then calibration at those thresholds (ordinal), or top±1 accuracy
(categorical); then stability (the spread of validation NLL over the run's grid members, which
decides only when one spread is at most half the other). Family champions that predict the
thresholds (ordinal, tiles) then meet on AUROC, calibration and top±1. When nothing separates the
two best heads the report says "no clear winner".
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import special

from vh import __version__
from vh.config import EvalConfig, to_dict
from vh.errors import VhError
from vh.eval import bootstrap as B
from vh.eval import calibration as C
from vh.eval import metrics as M
from vh.eval import plots as P
from vh.eval import slices as S

ROW_KEYS = (
    "run_id",
    "step_index",
    "step_fraction",
    "run_length",
    "max_tile",
    "highest_tile",
    "final_score",
)
KINDS = ("ordinal", "tiles", "logscore", "return")
TOP_TILES = (16384, 32768)  # the seed's "top thresholds" for AUROC and calibration
POOLS = ("threshold", "logscore", "return")  # heads are ranked inside a pool only
# What family champions of one pool meet on (their NLLs are not on one scale).
CROSS_CRITERIA = {
    "threshold": ["auroc_top", "ece_high", "within1"],
    "logscore": ["within1"],
    "return": ["rmse", "mae"],
}

LABELS = {
    "nll": "NLL",
    "bucket_nll": "bucket NLL",
    "brier": "Brier",
    "top1": "top-1",
    "within1": "top±1",
    "ece_top": "ECE top class",
    "auroc_top": "AUROC top",
    "ece_high": "ECE high",
    "spearman_score": "Spearman E[score]",
    "pearson_score": "Pearson E[score]",
    "mae": "MAE",
    "rmse": "RMSE",
    "spearman": "Spearman",
    "pearson": "Pearson",
    "stability": "stability",
}


def _label_of(metric: str) -> str:
    """Readable name of a figure: ``auroc@16384`` -> ``AUROC >= 16384``."""
    name, _, t = metric.partition("@")
    name = {"auroc": "AUROC", "ece": "ECE"}.get(name, LABELS.get(name, name))
    return f"{name} >= {t}" if t else name


HIGHER_IS_BETTER = {
    "auroc_top",
    "top1",
    "within1",
    "spearman_score",
    "pearson_score",
    "spearman",
    "pearson",
}


# =========================================================================== predictions files


@dataclass
class Predictions:
    """One head's predictions on the test states, row-aligned with the other heads'.

    Attributes:
        name: the run's name in the report.
        kind: ``ordinal`` | ``tiles`` | ``logscore`` | ``return``.
        thresholds: ``(K,)`` tile values ``T_k`` (labels and tile slices).
        medians: ``(K + 1,)`` median final score per highest-tile bucket (train split).
        rows: per test state, each ``(n,)``: see ``ROW_KEYS``.
        out: the head's outputs: ``logits`` ``(n, K)`` ordinal, ``(n, K + 1)`` tiles,
            ``(n, bins)`` logscore; ``val_logits`` and ``val_y`` (validation, for the
            temperature); ``bin_edges`` ``(bins + 1,)`` in log1p(score) units (logscore);
            ``value``, ``ret`` (raw return units) and optional ``nll_row`` (return).
        meta: JSON facts: run_dir, member, arch, monotone, encoding, n_params, baseline,
            cache ``{path, fingerprint, trunk}``.
    """

    name: str
    kind: str
    thresholds: np.ndarray
    medians: np.ndarray
    rows: dict[str, np.ndarray]
    out: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.rows["run_id"].shape[0])


def save_predictions(path: str | os.PathLike, pred: Predictions) -> None:
    """Write a predictions file atomically (temp file, then rename)."""
    arrays = {
        "name": np.array(pred.name),
        "kind": np.array(pred.kind),
        "meta": np.array(json.dumps(pred.meta)),
        "thresholds": pred.thresholds,
        "medians": pred.medians,
    }
    arrays |= {f"row_{k}": pred.rows[k] for k in ROW_KEYS}
    arrays |= {f"out_{k}": v for k, v in pred.out.items()}
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_predictions(path: str | os.PathLike) -> Predictions:
    """Read and check a predictions file; any defect is a :class:`VhError` naming the field."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise VhError("predictions file not found", path=path) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise VhError(f"unreadable predictions file ({e})", path=path) from None

    def need(key: str) -> np.ndarray:
        if key not in data:
            raise VhError("missing field", path=path, field=key)
        return data[key]

    kind = str(need("kind"))
    if kind not in KINDS:
        raise VhError(
            f"unknown head kind {kind!r} (valid: {', '.join(KINDS)})", path=path, field="kind"
        )
    try:
        meta = json.loads(str(need("meta")))
    except json.JSONDecodeError:
        raise VhError("not valid JSON", path=path, field="meta") from None
    rows = {k: need(f"row_{k}") for k in ROW_KEYS}
    out = {k[4:]: v for k, v in data.items() if k.startswith("out_")}
    pred = Predictions(
        name=str(need("name")),
        kind=kind,
        thresholds=need("thresholds"),
        medians=need("medians"),
        rows=rows,
        out=out,
        meta=meta,
    )
    _check_shapes(pred, path)
    return pred


def _check_shapes(pred: Predictions, path: str | os.PathLike) -> None:
    n, k = pred.n, pred.thresholds.shape[0]

    def expect(key: str, arr: np.ndarray | None, shape: tuple) -> None:
        if arr is None:
            raise VhError("missing field", path=path, field=key)
        if arr.shape != shape:
            raise VhError(f"shape {arr.shape}, expected {shape}", path=path, field=key)

    for key in ROW_KEYS:
        expect(f"row_{key}", pred.rows[key], (n,))
    expect("medians", pred.medians, (k + 1,))
    out = pred.out
    if pred.kind == "return":
        expect("out_value", out.get("value"), (n,))
        expect("out_ret", out.get("ret"), (n,))
        if "nll_row" in out:
            expect("out_nll_row", out["nll_row"], (n,))
        return
    width = {"ordinal": k, "tiles": k + 1}.get(pred.kind)
    if pred.kind == "logscore":
        edges = out.get("bin_edges")
        if edges is None or edges.ndim != 1 or edges.size < 2:
            raise VhError(
                "missing, or not a 1-D array of bin edges", path=path, field="out_bin_edges"
            )
        width = edges.size - 1
    expect("out_logits", out.get("logits"), (n, width))
    if "val_logits" in out:
        m = out["val_logits"].shape[0]
        expect("out_val_logits", out["val_logits"], (m, width))
        expect("out_val_y", out.get("val_y"), (m, k) if pred.kind == "ordinal" else (m,))


# =========================================================================== report inputs


@dataclass
class RunFiles:
    """What the report knows about one run dir, from the copies under ``runs/<name>/``."""

    config: dict
    summary: dict
    manifest: str
    curves: dict[str, list[dict]]


def _read_json(path: Path, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise VhError("file not found", path=path)
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise VhError(f"not valid JSON ({e.msg}, line {e.lineno})", path=path) from None


def _read_curves(run_dir: Path) -> dict[str, list[dict]]:
    curves = {}
    for f in sorted(run_dir.glob("members/*/metrics.jsonl")):
        records = []
        for i, line in enumerate(f.read_text().splitlines()):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise VhError("not valid JSON", path=f, field=f"line {i + 1}") from None
        curves[f.parent.name] = records
    return curves


def read_run_files(run_dir: Path) -> RunFiles:
    """Read the copied run files (config.json and summary.json are required)."""
    manifest = run_dir / "sampling_manifest.csv"
    return RunFiles(
        config=_read_json(run_dir / "config.json"),
        summary=_read_json(run_dir / "summary.json"),
        manifest=manifest.read_text() if manifest.is_file() else "",
        curves=_read_curves(run_dir),
    )


def load_inputs(report_dir: Path) -> tuple[list[Predictions], dict[str, RunFiles], dict]:
    """Predictions (in the recorded order), run files, and ``eval.json`` of a report dir."""
    info = _read_json(report_dir / "eval.json", required=False)
    files = {p.stem: p for p in sorted((report_dir / "predictions").glob("*.npz"))}
    if not files:
        raise VhError("no predictions/*.npz: run `vh eval RUN_DIR… --out` first", path=report_dir)
    order = [n for n in info.get("runs", []) if n in files] + sorted(
        set(files) - set(info.get("runs", []))
    )
    preds = [load_predictions(files[n]) for n in order]
    for p in preds[1:]:
        for key in ("run_id", "step_index"):
            if not np.array_equal(p.rows[key], preds[0].rows[key]):
                raise VhError(
                    f"not row-aligned with {preds[0].name} (evaluate all heads in "
                    "one `vh eval` call)",
                    path=files[p.name],
                    field=f"row_{key}",
                )
    runs = {
        p.name: read_run_files(report_dir / "runs" / p.name)
        for p in preds
        if (report_dir / "runs" / p.name).is_dir()
    }
    return preds, runs, info


# =========================================================================== scoring


@dataclass
class Context:
    """What every head shares: the rows, the runs, the resamples, the slices."""

    rows: dict[str, np.ndarray]
    index: B.RunIndex
    weights: np.ndarray  # (B, R) run multiplicities
    slices: dict[str, list[tuple[str, np.ndarray]]]
    score_order: np.ndarray  # argsort of the final score, shared by every Spearman
    top: list[int]  # thresholds of auroc_top / ece_high (AUROC is bootstrapped at these only)
    cfg: EvalConfig


@dataclass
class HeadScore:
    """Every figure of one head: bootstrapped headline figures and the rest."""

    name: str
    kind: str
    family: str
    pool: str
    primary: str
    baseline: bool
    headline: dict[str, float]
    reps: dict[str, np.ndarray]
    figures: dict
    plots: dict = field(default_factory=dict)


def make_context(preds: list[Predictions], cfg: EvalConfig) -> Context:
    """Run index, resamples and slices of the common test rows."""
    rows = {k: np.asarray(v) for k, v in preds[0].rows.items()}
    index = B.run_index(rows["run_id"])
    weights = B.draw_weights(n_runs=index.n_runs, n_boot=cfg.n_boot, seed=cfg.seed)
    slices = S.make_slices(
        step_fraction=rows["step_fraction"],
        run_id=rows["run_id"],
        run_length=rows["run_length"],
        max_tile=rows["max_tile"],
        thresholds=preds[0].thresholds,
    )
    return Context(
        rows=rows,
        index=index,
        weights=weights,
        slices=slices,
        score_order=np.argsort(rows["final_score"]),
        top=top_thresholds(preds),
        cfg=cfg,
    )


def top_thresholds(preds: list[Predictions]) -> list[int]:
    """The thresholds every threshold head predicts, restricted to >= 16384 and >= 32768
    (the two highest shared ones when neither is shared)."""
    sets = [{int(t) for t in p.thresholds} for p in preds if p.kind in ("ordinal", "tiles")]
    shared = sorted(set.intersection(*sets)) if sets else []
    return [t for t in shared if t in TOP_TILES] or shared[-2:]


def score_head(pred: Predictions, ctx: Context) -> HeadScore:
    """All figures of one head (dispatch on its kind)."""
    scorer = {
        "ordinal": _score_threshold,
        "tiles": _score_threshold,
        "logscore": _score_logscore,
        "return": _score_return,
    }[pred.kind]
    return scorer(pred, ctx)


def _finish(
    pred: Predictions,
    ctx: Context,
    stats: dict[str, B.Stat],
    figures: dict,
    plots: dict,
    family: str,
    pool: str,
    primary: str,
) -> HeadScore:
    """Bootstrap the headline statistics and package a head's score."""
    reps = B.replicate(stats, ctx.weights)
    return HeadScore(
        name=pred.name,
        kind=pred.kind,
        family=family,
        pool=pool,
        primary=primary,
        baseline=bool(pred.meta.get("baseline", False)),
        headline={k: s.point for k, s in stats.items()},
        reps=reps,
        figures=figures,
        plots=plots,
    )


def _slice_tables(ctx: Context, values: dict[str, tuple[np.ndarray, S.Reducer]]) -> dict:
    return {fam: S.slice_table(sl, ctx.index.code, values) for fam, sl in ctx.slices.items()}


# --------------------------------------------------------------------------- threshold heads


def _threshold_probs(
    kind: str, logits: np.ndarray, Y: np.ndarray, yb: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``q (n, K)``, bucket probabilities ``p (n, K+1)`` and the family NLL per row."""
    if kind == "ordinal":
        q = special.expit(logits)
        return q, M.buckets_from_q(q), M.bce(q=q, y=Y).mean(axis=1)
    p = special.softmax(logits, axis=1)
    return M.q_from_buckets(p), p, M.categorical_nll(p=p, y=yb)


def _calibration_figures(q, p, nll_row, Y, yb, thresholds, bins) -> dict:
    """The figures temperature scaling can move (uniform-bin ECE)."""
    out = {
        "nll": float(nll_row.mean()),
        "bucket_nll": M.nll(p=p, y=yb),
        "brier": float(M.brier(q=q, y=Y).mean()),
        "ece_top": M.ece(p=p.max(axis=1), y=M.top1(p=p, y=yb), bins=bins),
    }
    for k, t in enumerate(thresholds):
        out[f"ece@{t}"] = M.ece(p=q[:, k], y=Y[:, k], bins=bins)
    return out


def _temperature(pred: Predictions, ctx: Context, before: dict, Y, yb) -> dict | None:
    """Fit T on the validation split and recompute the calibration figures with it."""
    if not ctx.cfg.temperature or "val_logits" not in pred.out:
        return None
    kind = "binary" if pred.kind == "ordinal" else "categorical"
    t = C.fit_temperature(
        logits=pred.out["val_logits"], y=pred.out["val_y"], kind=kind, seed=ctx.cfg.seed
    )
    q, p, nll_row = _threshold_probs(pred.kind, pred.out["logits"] / t, Y, yb)
    after = _calibration_figures(q, p, nll_row, Y, yb, pred.thresholds, ctx.cfg.ece_bins)
    return {
        "T": t,
        "val_rows": int(pred.out["val_logits"].shape[0]),
        "before": before,
        "after": after,
    }


@dataclass
class _Threshold:
    """One threshold's share of a head's score."""

    stats: dict[str, B.Stat]
    row: dict  # the per-threshold table row
    panel: tuple  # reliability diagram: (label, count, sum_p, sum_y)
    pr: tuple  # (label, precision, recall)


def _threshold(t: int, q: np.ndarray, y: np.ndarray, ctx: Context) -> _Threshold:
    """Everything about one threshold from one sort and one binning of ``q``."""
    bins = ctx.cfg.ece_bins
    order = np.argsort(q)
    cell = M.bin_of(q, np.linspace(0.0, 1.0, bins + 1))  # (n,) uniform calibration bin
    table = M.reliability(p=q, y=y, index=cell, bins=bins)
    stats: dict[str, B.Stat] = {f"ece@{t}": B.Ece(ctx.index, q, y, cell, bins)}
    if t in ctx.top:  # bootstrapped where the verdict uses it, a point value elsewhere
        stats[f"auroc@{t}"] = B.Auroc(ctx.index, q, y, order=order)
    auroc = stats[f"auroc@{t}"].point if t in ctx.top else M.auroc(score=q, y=y, order=order)
    precision, recall = M.precision_recall(q=q, y=y)
    row = {
        "threshold": int(t),
        "positives": float(y.mean()),
        "auroc": auroc,
        "ece_uniform": M.ece_from(*table),
        "ece_mass": M.ece(p=q, y=y, bins=bins, strategy="mass", order=order),
        "brier": M.brier_score(q=q, y=y),
        **M.brier_decomposition(*table),
        "precision": precision,
        "recall": recall,
    }
    pr = (f">= {t}", *M.pr_curve(score=q, y=y, order=order, max_points=P.MAX_POINTS)[:2])
    return _Threshold(stats, row, (f">= {t}", *table), pr)


def _score_threshold(pred: Predictions, ctx: Context) -> HeadScore:
    T = np.asarray(pred.thresholds, dtype=np.int64)
    bins, idx = ctx.cfg.ece_bins, ctx.index
    Y = ctx.rows["highest_tile"][:, None] >= T[None, :]  # (n, K) bool
    yb = M.bucket_index(ctx.rows["highest_tile"], T)  # (n,) in 0..K
    q, p, nll_row = _threshold_probs(pred.kind, pred.out["logits"], Y, yb)
    p_top, correct, near = p.max(axis=1), M.top1(p=p, y=yb), M.within_one(p=p, y=yb)
    bucket_nll = M.categorical_nll(p=p, y=yb)  # one scale across ordinal and tiles heads
    expected = M.expected_score(q=q, medians=pred.medians)
    top_cell = M.bin_of(p_top, np.linspace(0.0, 1.0, bins + 1))
    per = [_threshold(t, q[:, k], Y[:, k], ctx) for k, t in enumerate(T)]

    # ---- headline figures, bootstrapped by run
    stats: dict[str, B.Stat] = {
        "nll": B.Mean(idx, nll_row),
        "bucket_nll": B.Mean(idx, bucket_nll),
        "brier": B.Mean(idx, M.brier(q=q, y=Y).mean(axis=1)),
        "top1": B.Mean(idx, correct),
        "within1": B.Mean(idx, near),
        "ece_top": B.Ece(idx, p_top, correct, top_cell, bins),
        "spearman_score": B.Spearman(
            idx, expected, ctx.rows["final_score"], y_order=ctx.score_order
        ),
        "pearson_score": B.Pearson(idx, expected, ctx.rows["final_score"]),
    }
    for one in per:
        stats |= one.stats

    # ---- the rest: per threshold, confusion, temperature, slices
    before = {k: stats[k].point for k in ("nll", "bucket_nll", "brier", "ece_top")}
    before |= {f"ece@{t}": stats[f"ece@{t}"].point for t in T}
    figures = {
        "per_threshold": [one.row for one in per],
        "ece_top_mass": M.ece(p=p_top, y=correct, bins=bins, strategy="mass"),
        "confusion": M.confusion_matrix(true=yb, pred=p.argmax(axis=1), n_classes=T.size + 1)
        .astype(np.int64)
        .tolist(),
        "bucket_labels": _bucket_labels(T),
        "rank_inconsistency": (
            float(M.rank_inconsistency(q=q).mean()) if pred.kind == "ordinal" else None
        ),
        "score_medians": [float(m) for m in pred.medians],
        "temperature": _temperature(pred, ctx, before, Y, yb),
        "slices": _slice_tables(
            ctx,
            {
                "nll": (nll_row, "mean"),
                "bucket_nll": (bucket_nll, "mean"),
                "top1": (correct, "mean"),
                "within1": (near, "mean"),
            },
        ),
    }
    plots = {
        "reliability": [one.panel for one in per]
        + [("top class", *M.reliability(p=p_top, y=correct, index=top_cell, bins=bins))],
        "pr": [one.pr for one in per],
    }
    family = f"{pred.kind} (T = {', '.join(str(t) for t in T)})"
    return _finish(pred, ctx, stats, figures, plots, family, "threshold", "nll")


def _bucket_labels(T: np.ndarray) -> list[str]:
    return [f"<{T[0]}"] + [str(int(t)) for t in T[:-1]] + [f">={T[-1]}"]


# --------------------------------------------------------------------------- logscore heads


def _score_logscore(pred: Predictions, ctx: Context) -> HeadScore:
    edges = np.asarray(pred.out["bin_edges"], dtype=np.float64)  # log1p(score) units
    nb, idx = edges.size - 1, ctx.index
    y = M.bin_of(np.log1p(ctx.rows["final_score"]), edges)
    p = special.softmax(pred.out["logits"], axis=1)
    nll_row, correct, near = (M.categorical_nll(p=p, y=y), M.top1(p=p, y=y), M.within_one(p=p, y=y))
    expected = p @ np.expm1((edges[:-1] + edges[1:]) / 2.0)  # (n,) expected final score
    p_top, n_cells = p.max(axis=1), ctx.cfg.ece_bins
    stats: dict[str, B.Stat] = {
        "nll": B.Mean(idx, nll_row),
        "top1": B.Mean(idx, correct),
        "within1": B.Mean(idx, near),
        "ece_top": B.Ece(idx, p_top, correct, M.calibration_bins(p=p_top, bins=n_cells), n_cells),
        "spearman_score": B.Spearman(
            idx, expected, ctx.rows["final_score"], y_order=ctx.score_order
        ),
        "pearson_score": B.Pearson(idx, expected, ctx.rows["final_score"]),
    }
    temperature = None
    if ctx.cfg.temperature and "val_logits" in pred.out:
        t = C.fit_temperature(
            logits=pred.out["val_logits"],
            y=pred.out["val_y"],
            kind="categorical",
            seed=ctx.cfg.seed,
        )
        p_t = special.softmax(pred.out["logits"] / t, axis=1)
        temperature = {
            "T": t,
            "val_rows": int(pred.out["val_logits"].shape[0]),
            "before": {"nll": stats["nll"].point, "ece_top": stats["ece_top"].point},
            "after": {
                "nll": M.nll(p=p_t, y=y),
                "ece_top": M.ece(p=p_t.max(axis=1), y=M.top1(p=p_t, y=y), bins=ctx.cfg.ece_bins),
            },
        }
    figures = {
        "n_bins": nb,
        "temperature": temperature,
        "slices": _slice_tables(
            ctx, {"nll": (nll_row, "mean"), "top1": (correct, "mean"), "within1": (near, "mean")}
        ),
    }
    return _finish(pred, ctx, stats, figures, {}, f"logscore ({nb} bins)", "logscore", "nll")


# --------------------------------------------------------------------------- return heads


def _score_return(pred: Predictions, ctx: Context) -> HeadScore:
    value = np.asarray(pred.out["value"], dtype=np.float64)
    ret = np.asarray(pred.out["ret"], dtype=np.float64)
    err, idx = value - ret, ctx.index
    stats: dict[str, B.Stat] = {
        "mae": B.Mean(idx, np.abs(err)),
        "rmse": B.Rmse(idx, err),
        "spearman": B.Spearman(idx, value, ret),
        "pearson": B.Pearson(idx, value, ret),
    }
    distributional = "nll_row" in pred.out
    if distributional:
        stats["nll"] = B.Mean(idx, pred.out["nll_row"])
    figures = {
        "encoding": pred.meta.get("encoding", ""),
        "slices": _slice_tables(ctx, {"mae": (np.abs(err), "mean"), "rmse": (err**2, "root_mean")}),
    }
    plots = {"trajectories": _trajectories(ctx, value, ret)}
    family = "return (distributional)" if distributional else "return (scalar)"
    return _finish(
        pred, ctx, stats, figures, plots, family, "return", "nll" if distributional else "rmse"
    )


def _trajectories(ctx: Context, value: np.ndarray, ret: np.ndarray, n_games: int = 4) -> list:
    """The longest few test games, step by step (rows are sorted by run, then step)."""
    counts = np.bincount(ctx.index.code)
    games = []
    for code in np.argsort(-counts, kind="stable")[:n_games]:
        rows = np.flatnonzero(ctx.index.code == code)
        games.append(
            (f"run {ctx.index.ids[code]}", ctx.rows["step_index"][rows], value[rows], ret[rows])
        )
    return games


# =========================================================================== the verdict


def add_composites(scores: list[HeadScore], top: list[int]) -> None:
    """Add ``auroc_top`` and ``ece_high`` (means over the shared top thresholds)."""
    for s in scores:
        if s.pool != "threshold" or not top:
            continue
        for name, prefix in (("auroc_top", "auroc@"), ("ece_high", "ece@")):
            s.headline[name] = float(np.mean([s.headline[f"{prefix}{t}"] for t in top]))
            s.reps[name] = np.mean([s.reps[f"{prefix}{t}"] for t in top], axis=0)


def _better(metric: str, a: float, b: float) -> bool:
    return a > b if metric in HIGHER_IS_BETTER else a < b


def _paired(a: HeadScore, b: HeadScore, metric: str, ci: float) -> dict:
    """Compare two heads on one metric: their values and the paired difference a - b."""
    lo, hi = B.interval(a.reps[metric] - b.reps[metric], ci)
    decided = B.excludes_zero(lo, hi)
    va, vb = a.headline[metric], b.headline[metric]
    return {
        "criterion": metric,
        "a": a.name,
        "b": b.name,
        "a_value": va,
        "b_value": vb,
        "a_ci": B.interval(a.reps[metric], ci),
        "b_ci": B.interval(b.reps[metric], ci),
        "diff": va - vb,
        "lo": lo,
        "hi": hi,
        "decided": decided,
        "winner": (a.name if _better(metric, va, vb) else b.name) if decided else None,
    }


def _grid_spread(s: HeadScore) -> float | None:
    nlls = s.figures.get("grid_val_nll") or []
    return float(np.std(nlls)) if len(nlls) >= 2 else None


def _stability(a: HeadScore, b: HeadScore) -> dict | None:
    sa, sb = _grid_spread(a), _grid_spread(b)
    if sa is None or sb is None:
        return None
    winner = (
        a.name if sa <= 0.5 * sb and sa < sb else (b.name if sb <= 0.5 * sa and sb < sa else None)
    )
    return {
        "criterion": "stability",
        "a": a.name,
        "b": b.name,
        "a_value": sa,
        "b_value": sb,
        "decided": winner is not None,
        "winner": winner,
    }


def _cascade(a: HeadScore, b: HeadScore, criteria: list[str], ci: float) -> dict:
    """Walk the criteria until one separates ``a`` and ``b``; stability last."""
    steps = []
    for metric in criteria:
        if metric in a.reps and metric in b.reps:
            steps.append(_paired(a, b, metric, ci))
            if steps[-1]["decided"]:
                return {"winner": steps[-1]["winner"], "steps": steps}
    stab = _stability(a, b)
    if stab is not None:
        steps.append(stab)
        if stab["decided"]:
            return {"winner": stab["winner"], "steps": steps}
    return {"winner": None, "steps": steps}


def _family_criteria(s: HeadScore) -> list[str]:
    if s.kind == "ordinal":
        return ["nll", "auroc_top", "ece_high"]
    if s.kind in ("tiles", "logscore"):
        return ["nll", "within1"]
    return [s.primary, "mae"] if s.primary == "nll" else ["rmse", "mae"]


def _rank_key(s: HeadScore, metric: str) -> float:
    """Sort key, best first; a head without the figure (or NaN) sorts last."""
    v = s.headline.get(metric, np.nan)
    return np.inf if not np.isfinite(v) else (-v if metric in HIGHER_IS_BETTER else v)


def decide_pool(scores: list[HeadScore], ci: float) -> dict:
    """The verdict among comparable heads: family champions, then the champions' contest.

    Returns:
        ``{"pool", "winner" (name or None), "families": [...], "cross": cascade or None,
        "deciding": the step that decided, or the first step of the undecided comparison}``.
    """
    families: dict[str, list[HeadScore]] = {}
    for s in scores:
        families.setdefault(s.family, []).append(s)
    fam_results, champions, clear = [], [], True
    for fam, heads in families.items():
        ranked = sorted(heads, key=lambda h: _rank_key(h, h.primary))
        res = {"family": fam, "ranking": [h.name for h in ranked], "cascade": None}
        champ = ranked[0]
        if len(ranked) > 1:
            res["cascade"] = _cascade(ranked[0], ranked[1], _family_criteria(ranked[0]), ci)
            won = res["cascade"]["winner"]
            clear &= won is not None
            champ = next(h for h in ranked if h.name == won) if won else ranked[0]
        res["champion"] = champ.name
        fam_results.append(res)
        champions.append(champ)
    cross = None
    if len(champions) > 1:
        criteria = CROSS_CRITERIA[scores[0].pool]
        champions.sort(key=lambda h: _rank_key(h, criteria[0]))
        cross = _cascade(champions[0], champions[1], criteria, ci)
        clear &= cross["winner"] is not None
        winner = cross["winner"]
    else:
        winner = fam_results[0]["champion"]
    return {
        "pool": scores[0].pool,
        "winner": winner if clear else None,
        "families": fam_results,
        "cross": cross,
        "deciding": _deciding_step([cross] + [r["cascade"] for r in fam_results]),
    }


def _deciding_step(cascades: list[dict | None]) -> dict | None:
    """The step to cite for "the difference between the two best heads"."""
    cascades = [c for c in cascades if c and c["steps"]]
    for c in cascades:
        if c["winner"] is None:
            return c["steps"][0]
    return cascades[0]["steps"][-1] if cascades else None


def decide(scores: list[HeadScore], ci: float) -> list[dict]:
    """One verdict per pool present (threshold heads first)."""
    return [
        decide_pool([s for s in scores if s.pool == pool], ci)
        for pool in POOLS
        if any(s.pool == pool for s in scores)
    ]


# =========================================================================== writing


def _num(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    v = float(v)
    return f"{v:,.0f}" if abs(v) >= 1000 else (f"{v:.2f}" if abs(v) >= 10 else f"{v:.4f}")


def _with_ci(s: HeadScore, metric: str, ci: float) -> str:
    if metric not in s.headline:
        return "–"
    lo, hi = B.interval(s.reps[metric], ci)
    return f"{_num(s.headline[metric])} [{_num(lo)}, {_num(hi)}]"


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _head_json(s: HeadScore, pred: Predictions, ci: float) -> dict:
    headline = {}
    for k, v in s.headline.items():
        lo, hi = B.interval(s.reps[k], ci)
        headline[k] = {
            "value": v,
            "lo": lo,
            "hi": hi,
            "undefined_replicates": int((~np.isfinite(s.reps[k])).sum()),
        }
    return {
        "kind": s.kind,
        "family": s.family,
        "pool": s.pool,
        "baseline": s.baseline,
        "meta": pred.meta,
        "headline": headline,
        **s.figures,
    }


# --------------------------------------------------------------------------- the writeup


def _label(s: HeadScore) -> str:
    return f"{s.name} (baseline)" if s.baseline else s.name


def _step_sentence(step: dict, top: list[int]) -> str:
    crit = step["criterion"]
    what = {
        "nll": "test NLL",
        "auroc_top": "AUROC at " + " and ".join(f">= {t}" for t in top),
        "ece_high": "calibration (ECE) at " + " and ".join(f">= {t}" for t in top),
        "within1": "top±1 accuracy",
        "rmse": "RMSE of the return",
        "mae": "MAE of the return",
        "stability": "stability (spread of the validation NLL over the grid members)",
    }.get(crit, LABELS.get(crit, crit))
    if crit == "stability":
        text = (
            f"On {what}: {step['a']} {_num(step['a_value'])} vs {step['b']} {_num(step['b_value'])}"
        )
        return text + (
            f"; {step['winner']} is the more stable."
            if step["decided"]
            else "; not different enough to decide."
        )
    a_lo, a_hi = step["a_ci"]
    b_lo, b_hi = step["b_ci"]
    text = (
        f"On {what}, {step['a']} has {_num(step['a_value'])} [{_num(a_lo)}, {_num(a_hi)}] "
        f"and {step['b']} {_num(step['b_value'])} [{_num(b_lo)}, {_num(b_hi)}]; the "
        f"difference {_num(step['diff'])} [{_num(step['lo'])}, {_num(step['hi'])}] "
    )
    if step["decided"]:
        return text + f"excludes zero, so {step['winner']} wins on it."
    return text + "includes zero, so it does not separate them."


def writeup(
    verdicts: list[dict],
    by_name: dict[str, HeadScore],
    top: list[int],
    ctx: Context,
    notes: list[str],
) -> list[str]:
    """The plain-English page: paragraphs naming the winner (or none) and citing numbers."""
    ci = int(round(ctx.cfg.ci * 100))
    paras = [
        f"{len(by_name)} head(s) were scored on the same {ctx.index.code.size:,} test "
        f"states from {ctx.index.n_runs:,} test runs. Intervals are {ci} % bootstrap "
        f"percentile intervals over runs ({ctx.cfg.n_boot} resamples); a difference "
        "decides only when its interval excludes zero."
    ]
    for v in verdicts:
        pool = {
            "threshold": "threshold heads (ordinal and tiles, scored on the same thresholds)",
            "logscore": "log-score heads",
            "return": "return heads",
        }[v["pool"]]
        if v["winner"]:
            w = by_name[v["winner"]]
            paras.append(f"**Winner among the {pool}: {_label(w)}** ({w.family}).")
        else:
            paras.append(f"**No clear winner among the {pool}.**")
        for fam in v["families"]:
            if fam["cascade"] is None:
                paras.append(f"{fam['champion']} is the only {fam['family']} head.")
                continue
            lead = (
                f"In the {fam['family']} family ({len(fam['ranking'])} heads), "
                f"{fam['ranking'][0]} has the best test {LABELS[by_name[fam['ranking'][0]].primary]}"
                f" and {fam['ranking'][1]} is next."
            )
            paras.append(
                " ".join([lead] + [_step_sentence(s, top) for s in fam["cascade"]["steps"]])
            )
        if v["cross"] is not None:
            paras.append(
                " ".join(
                    ["Across families, the champions meet on the shared thresholds."]
                    + [_step_sentence(s, top) for s in v["cross"]["steps"]]
                )
            )
    paras += _baseline_sentences(verdicts, by_name, top, ctx.cfg.ci)
    paras += _calibration_sentences(verdicts, by_name, top)
    paras += _ece_note(list(by_name.values()), ctx.cfg.ci)
    paras += [f"Note: {n}" for n in notes]
    return paras


def _ece_note(scores: list[HeadScore], ci: float) -> list[str]:
    """Say so when an ECE estimate lies below its own interval (ECE's upward noise bias)."""
    for s in scores:
        for k in s.headline:
            lo, _ = B.interval(s.reps[k], ci)
            if k.startswith("ece") and s.headline[k] < lo:
                return [
                    "Note: ECE is biased upward by sampling noise, and a resample of runs adds "
                    "noise, so some ECE intervals lie above their estimate (e.g. "
                    f"{s.name} {_label_of(k)} {_with_ci(s, k, ci)}); read them as a range of "
                    "plausible miscalibration, not a symmetric error bar."
                ]
    return []


def _baseline_sentences(
    verdicts: list[dict], by_name: dict[str, HeadScore], top: list[int], ci: float
) -> list[str]:
    """The leader of each pool against each raw-board baseline, on the pool's first criterion."""
    out = []
    for v in verdicts:
        leader = by_name[v["winner"] or v["families"][0]["champion"]]
        metric = CROSS_CRITERIA[v["pool"]][0]
        for s in by_name.values():
            if s.baseline and s is not leader and s.pool == v["pool"] and metric in s.reps:
                out.append(
                    "Against the raw-board baseline: "
                    + _step_sentence(_paired(leader, s, metric, ci), top)
                )
    return out


def _calibration_sentences(
    verdicts: list[dict], by_name: dict[str, HeadScore], top: list[int]
) -> list[str]:
    out = []
    for v in verdicts:
        name = v["winner"] or v["families"][0]["ranking"][0]
        temp = by_name[name].figures.get("temperature")
        if not temp:
            continue
        b, a = temp["before"], temp["after"]
        text = (
            f"Temperature scaling of {name} on the validation split gives T = "
            f"{temp['T']:.3f}: test NLL {_num(b['nll'])} -> {_num(a['nll'])}"
        )
        for t in top:
            if f"ece@{t}" in b:
                text += f", ECE at >= {t} {_num(b[f'ece@{t}'])} -> {_num(a[f'ece@{t}'])}"
        out.append(text + ".")
    return out


# --------------------------------------------------------------------------- tables


def comparison_table(
    scores: list[HeadScore], top: list[int], runs: dict[str, RunFiles], ci: float
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the table across all runs."""
    cols = (
        ["nll", "bucket_nll", "brier"]
        + [f"auroc@{t}" for t in top]
        + [f"ece@{t}" for t in top]
        + ["top1", "within1", "spearman_score", "mae", "rmse", "spearman"]
    )
    cols = [c for c in cols if any(c in s.headline for s in scores)]
    header = ["run", "kind", "arch", "params"] + [_label_of(c) for c in cols]
    rows = []
    for s in scores:
        summary = runs[s.name].summary if s.name in runs else {}
        rows.append(
            [
                _label(s),
                s.kind,
                str(summary.get("arch", "")),
                f"{summary['n_params']:,}" if "n_params" in summary else "n/a",
            ]
            + [_with_ci(s, c, ci) for c in cols]
        )
    return header, rows


def threshold_rows(s: HeadScore) -> tuple[list[str], list[list[str]]]:
    keys = [
        "positives",
        "auroc",
        "ece_uniform",
        "ece_mass",
        "brier",
        "reliability",
        "resolution",
        "uncertainty",
        "precision",
        "recall",
    ]
    return (
        ["threshold"] + keys,
        [[f">= {r['threshold']}"] + [_num(r[k]) for k in keys] for r in s.figures["per_threshold"]],
    )


def temperature_rows(temp: dict) -> tuple[list[str], list[list[str]]]:
    return (
        ["figure", "before", f"after (T = {temp['T']:.3f})"],
        [[_label_of(k), _num(v), _num(temp["after"].get(k))] for k, v in temp["before"].items()],
    )


def slice_rows(table: list[dict]) -> tuple[list[str], list[list[str]]]:
    keys = [k for k in table[0] if k not in ("slice", "count", "runs")]
    return (
        ["slice", "states", "runs"] + [_label_of(k) for k in keys],
        [
            [r["slice"], f"{r['count']:,}", f"{r['runs']:,}"] + [_num(r[k]) for k in keys]
            for r in table
        ],
    )


def run_info_rows(pred: Predictions, rf: RunFiles | None) -> list[list[str]]:
    """Config, cache fingerprint, seeds and sampling of one run (what is known of them)."""
    meta, cache = pred.meta, pred.meta.get("cache", {})
    fit = rf.config.get("fit", {}) if rf else {}
    grid = rf.config.get("grid", []) if rf else []
    summary = rf.summary if rf else {}
    rows = [
        ("run dir", meta.get("run_dir")),
        ("member (best by validation NLL)", meta.get("member")),
        ("cache", cache.get("path") and f"{cache['path']} (trunk: {cache.get('trunk')})"),
        ("cache fingerprint", cache.get("fingerprint")),
        ("split", fit.get("split") and json.dumps(fit["split"])),
        ("sampler", fit.get("sampler") and json.dumps(fit["sampler"])),
        (
            "grid (name: lr, wd, seed)",
            ", ".join(
                f"{g.get('name')}: {g.get('lr')}, {g.get('wd')}, {g.get('seed')}" for g in grid
            ),
        ),
        (
            "rows (train / val)",
            "train_rows" in summary and f"{summary['train_rows']:,} / {summary['val_rows']:,}",
        ),
        ("test states (own / common)", f"{meta.get('own_test_rows', pred.n):,} / {pred.n:,}"),
    ]
    return [[k, str(v)] for k, v in rows if v]


# --------------------------------------------------------------------------- rendering


@dataclass
class Doc:
    """A report as blocks, rendered both to Markdown and to self-contained HTML."""

    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]], numeric: bool = True) -> None:
        """A table; ``numeric`` right-aligns its columns after the first in HTML."""
        self.blocks.append(("table", header, rows, numeric))

    def img(self, path: str, caption: str) -> None:
        self.blocks.append(("img", path, caption))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self, base: Path) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                out.append(
                    "\n".join(
                        ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
                        + ["| " + " | ".join(r) + " |" for r in b[2]]
                    )
                )
            elif b[0] == "img":
                out.append(f"![{b[2]}]({os.path.relpath(b[1], base)})")
            else:
                out.append("```\n" + b[1] + "\n```")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                text = html.escape(b[1])
                parts = text.split("**")  # **bold** is the only inline markup used
                body.append(
                    "<p>"
                    + "".join(f"<strong>{t}</strong>" if i % 2 else t for i, t in enumerate(parts))
                    + "</p>"
                )
            elif b[0] == "table":
                head = "".join(f"<th>{html.escape(c)}</th>" for c in b[1])
                rows = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                    for r in b[2]
                )
                cls = ' class="num"' if b[3] else ""
                body.append(
                    f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
                )
            elif b[0] == "img":
                data = base64.b64encode(Path(b[1]).read_bytes()).decode("ascii")
                body.append(
                    f'<figure><img alt="{html.escape(b[2])}" '
                    f'src="data:image/png;base64,{data}"><figcaption>'
                    f"{html.escape(b[2])}</figcaption></figure>"
                )
            else:
                body.append(f"<pre>{html.escape(b[1])}</pre>")
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
        )


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
    "color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;"
    "font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}"
    ".num td,.num th{text-align:right}"
    "th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%}figure{margin:1em 0}figcaption{font-size:12px;color:#555}"
    "pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px}"
)


# --------------------------------------------------------------------------- plots


def draw_plots(
    plot_dir: Path, scores: list[HeadScore], runs: dict[str, RunFiles], ci: float
) -> dict[str, list[tuple[str, str]]]:
    """Every PNG; returns name -> [(path, caption)] ("" for the cross-run plots)."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[tuple[str, str]]] = {"": []}
    for s in scores:
        mine = out.setdefault(s.name, [])
        if "reliability" in s.plots:
            mine.append(
                (
                    P.reliability(
                        plot_dir / f"{s.name}_reliability.png",
                        f"{s.name}: reliability (uniform bins)",
                        s.plots["reliability"],
                    ),
                    "reliability diagrams",
                )
            )
            mine.append(
                (
                    P.confusion(
                        plot_dir / f"{s.name}_confusion.png",
                        f"{s.name}: highest-tile bucket",
                        np.array(s.figures["confusion"]),
                        s.figures["bucket_labels"],
                    ),
                    "confusion matrix (rows: true bucket)",
                )
            )
            mine.append(
                (
                    P.pr_curves(
                        plot_dir / f"{s.name}_pr.png", f"{s.name}: precision-recall", s.plots["pr"]
                    ),
                    "precision-recall per threshold",
                )
            )
        if "trajectories" in s.plots:
            mine.append(
                (
                    P.trajectories(
                        plot_dir / f"{s.name}_games.png",
                        f"{s.name}: predicted vs realised return",
                        s.plots["trajectories"],
                    ),
                    "test games, step by step",
                )
            )
        if s.name in runs and runs[s.name].curves:
            mine.append(
                (
                    P.training_curves(
                        plot_dir / f"{s.name}_curves.png",
                        f"{s.name}: training",
                        runs[s.name].curves,
                    ),
                    "training curves (metrics.jsonl)",
                )
            )
    out[""] += _cross_plots(plot_dir, scores, ci)
    return out


def _cross_plots(plot_dir: Path, scores: list[HeadScore], ci: float) -> list[tuple[str, str]]:
    out = []
    for pool in POOLS:
        group = [s for s in scores if s.pool == pool]
        if not group:
            continue
        metric = "auroc_top" if "auroc_top" in group[0].headline else group[0].primary
        if all(metric in s.headline for s in group):
            lims = [B.interval(s.reps[metric], ci) for s in group]
            out.append(
                (
                    P.intervals(
                        plot_dir / f"{pool}_{metric}.png",
                        f"{pool} heads",
                        _label_of(metric),
                        [_label(s) for s in group],
                        [s.headline[metric] for s in group],
                        [a for a, _ in lims],
                        [b for _, b in lims],
                    ),
                    f"{_label_of(metric)} with intervals",
                )
            )
        # one scale across families: bucket NLL for threshold heads
        slice_metric = {"threshold": "bucket_nll", "logscore": "nll", "return": "rmse"}[pool]
        for fam in group[0].figures["slices"]:
            tables = {_label(s): s.figures["slices"][fam] for s in group}
            labels = [r["slice"] for r in next(iter(tables.values()))]
            series = {n: [r.get(slice_metric) for r in t] for n, t in tables.items()}
            out.append(
                (
                    P.by_slice(
                        plot_dir / f"{pool}_slices_{fam}.png",
                        f"{pool} heads by {fam}",
                        _label_of(slice_metric),
                        labels,
                        series,
                    ),
                    f"{_label_of(slice_metric)} by {fam} slice",
                )
            )
    return out


# =========================================================================== the driver


@dataclass
class Scored:
    """Every head scored on the shared rows, and the verdicts."""

    ctx: Context
    scores: list[HeadScore]
    top: list[int]  # the shared top thresholds of auroc_top / ece_high
    verdicts: list[dict]


def score_all(preds: list[Predictions], runs: dict[str, RunFiles], cfg: EvalConfig) -> Scored:
    """Score every head (all metrics, bootstrap) and decide the verdicts.

    Args:
        preds: row-aligned predictions.
        runs: copied run files by name (for the grid spread of the stability rule).
        cfg: the eval config.
    """
    ctx = make_context(preds, cfg)
    scores = [score_head(p, ctx) for p in preds]
    for s in scores:
        members = runs[s.name].summary.get("members", {}) if s.name in runs else {}
        s.figures["grid_val_nll"] = [
            m["best_val_nll"]
            for m in members.values()
            if isinstance(m, dict) and m.get("best_val_nll") is not None
        ]
    add_composites(scores, ctx.top)
    return Scored(ctx, scores, ctx.top, decide(scores, cfg.ci))


def write_report(
    report_dir: Path,
    scored: Scored,
    preds: list[Predictions],
    runs: dict[str, RunFiles],
    info: dict,
) -> dict:
    """Write metrics.json, the plots, report.md and index.html; return metrics.json's content."""
    cfg, notes = scored.ctx.cfg, list(info.get("notes", []))
    metrics = _jsonable(
        {
            "vh_version": __version__,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "config": {"eval": to_dict(cfg)},
            "evaluate": info,
            "n_states": scored.ctx.index.code.size,
            "n_runs": scored.ctx.index.n_runs,
            "top_thresholds": scored.top,
            "notes": notes,
            "runs": {
                s.name: _head_json(s, p, cfg.ci) for s, p in zip(scored.scores, preds, strict=True)
            },
            "verdicts": scored.verdicts,
            "winner": scored.verdicts[0]["winner"],
        }
    )
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    images = draw_plots(report_dir / "plots", scored.scores, runs, cfg.ci)
    doc = _document(scored, preds, runs, notes, images)
    (report_dir / "report.md").write_text(doc.markdown(report_dir))
    (report_dir / "index.html").write_text(doc.html("vh eval report"))
    return metrics


def build_report(report_dir: str | os.PathLike, cfg: EvalConfig) -> dict:
    """Score every head in a report dir, decide the winner, write the pages (files only).

    Args:
        report_dir: a dir with ``predictions/*.npz`` (and ``runs/``, ``eval.json``).
        cfg: the eval config (bootstrap size and seed, ECE bins, interval level, temperature).

    Returns:
        The ``metrics.json`` content (also written to the dir).
    """
    report_dir = Path(report_dir)
    preds, runs, info = load_inputs(report_dir)
    return write_report(report_dir, score_all(preds, runs, cfg), preds, runs, info)


def _document(scored: Scored, preds, runs, notes, images) -> Doc:
    scores, top, ctx = scored.scores, scored.top, scored.ctx
    ci = ctx.cfg.ci
    by_name = {s.name: s for s in scores}
    doc = Doc()
    doc.h(1, "vh eval report")
    doc.h(2, "Comparison across runs")
    doc.table(*comparison_table(scores, top, runs, ci))
    doc.h(2, "Verdict")
    for para in writeup(scored.verdicts, by_name, top, ctx, notes):
        doc.p(para)
    for path, caption in images[""]:
        doc.img(path, caption)
    for s, pred in zip(scores, preds, strict=True):
        doc.h(2, f"Run {_label(s)}: {s.family}")
        doc.table(["field", "value"], run_info_rows(pred, runs.get(s.name)), numeric=False)
        if s.figures.get("rank_inconsistency") is not None:
            doc.p(
                f"Rank inconsistencies (rows with some q_(k+1) > q_k): "
                f"{100 * s.figures['rank_inconsistency']:.3f} %"
                + (" (monotone by construction)." if pred.meta.get("monotone") else ".")
            )
        if "per_threshold" in s.figures:
            doc.table(*threshold_rows(s))
        if s.figures.get("temperature"):
            doc.table(*temperature_rows(s.figures["temperature"]))
        for fam, table in s.figures["slices"].items():
            doc.h(3, f"{s.name} by {fam}")
            doc.table(*slice_rows(table))
        for path, caption in images.get(s.name, []):
            doc.img(path, f"{s.name}: {caption}")
        if s.name in runs:
            doc.code(json.dumps(runs[s.name].config.get("fit", {}), indent=1))
            if runs[s.name].manifest:
                doc.code(runs[s.name].manifest.strip())
    return doc
