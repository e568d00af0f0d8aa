"""The eval report, built only from files: predictions and copies of the run dirs.

``build_report(REPORT_DIR, cfg)`` reads top to bottom: read the inputs, score every head,
decide the verdict, write ``metrics.json`` (every figure), the plots, ``report.md`` and a
self-contained ``index.html``. Each job lives in a module named after it:

============================  ===============================================================
:mod:`vh.eval.predictions`    the predictions file format (save, load, checks)
:mod:`vh.eval.inputs`         reading a report dir: predictions in order, copied run files
:mod:`vh.eval.labels`         the labels of test states, from their runs' outcomes
:mod:`vh.eval.scoring`        every figure of every head, per target kind; temperature scaling
:mod:`vh.eval.verdict`        the winner rules (and heads left out for non-finite figures)
:mod:`vh.eval.writeup`        the plain-English verdict
:mod:`vh.eval.tables`         the tables, as strings
:mod:`vh.eval.render`         Markdown and self-contained HTML
:mod:`vh.eval.plots`          the PNGs
:mod:`vh.eval.play`           play results (``vh play``) beside the offline figures
============================  ===============================================================

Report dir: ``predictions/<name>.npz``, ``runs/<name>/``, ``eval.json``, ``play/<i>/play.json``
in (see :mod:`vh.eval.inputs`, :mod:`vh.eval.play`); ``metrics.json``, ``report.md``,
``index.html``, ``plots/*.png`` out.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vh import __version__, durable
from vh.config import EvalConfig, to_dict
from vh.eval import bootstrap as B
from vh.eval.formatting import head_label
from vh.eval.inputs import RunFiles, load_inputs, read_run_files, trunk_warning
from vh.eval.play import PlayFile, load_play
from vh.eval.play import compare as compare_play
from vh.eval.play import comparison_sentence as play_sentence
from vh.eval.play import section as play_section
from vh.eval.plots import draw_plots
from vh.eval.predictions import KINDS, ROW_KEYS, Predictions, load_predictions, save_predictions
from vh.eval.render import Doc
from vh.eval.scoring import Context, HeadScore, add_composites, make_context, score_head
from vh.eval.tables import (
    comparison_table,
    run_info_rows,
    slice_rows,
    temperature_rows,
    threshold_rows,
)
from vh.eval.verdict import decide, decide_pool, pool_names
from vh.eval.writeup import plain_english, writeup

# Names importers of this module have used; each now lives in the module of its job.
__all__ = [
    "KINDS",
    "ROW_KEYS",
    "Context",
    "HeadScore",
    "Predictions",
    "RunFiles",
    "Scored",
    "build_report",
    "decide",
    "decide_pool",
    "load_inputs",
    "load_predictions",
    "read_run_files",
    "save_predictions",
    "score_all",
    "write_report",
]


def build_report(report_dir: str | os.PathLike, cfg: EvalConfig, log=None) -> dict:
    """Score every head in a report dir, decide the winner, write the pages (files only).

    Args:
        report_dir: a dir with ``predictions/*.npz`` (and ``runs/``, ``eval.json``,
            ``play/``).
        cfg: the eval config (bootstrap size and seed, ECE bins, interval level, temperature).
        log: receives the warnings (a head whose trunk saw its test runs), one line each.

    Returns:
        The ``metrics.json`` content (also written to the dir).
    """
    report_dir = Path(report_dir)
    preds, runs, info = load_inputs(report_dir)
    play_files = load_play(report_dir, info)  # before scoring: a missing copy fails fast
    metrics = write_report(report_dir, score_all(preds, runs, cfg), preds, runs, info, play_files)
    for w in metrics["warnings"]:
        if log is not None:
            log(f"warning: {w}")
    return metrics


# --------------------------------------------------------------------------- scoring and verdict


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
    return Scored(ctx, scores, ctx.top, decide(scores, cfg.ci, n_runs=ctx.index.n_runs))


# --------------------------------------------------------------------------- writing


def write_report(
    report_dir: Path,
    scored: Scored,
    preds: list[Predictions],
    runs: dict[str, RunFiles],
    info: dict,
    play_files: list[PlayFile] | None = None,
) -> dict:
    """Write metrics.json, the plots, report.md and index.html; return metrics.json's content."""
    cfg, notes = scored.ctx.cfg, list(info.get("notes", []))
    play_files = play_files or []
    played = compare_play(scored.scores, play_files, scored.top, cfg) if play_files else None
    seen = {p.name: p.meta["trunk_seen"] for p in preds if p.meta.get("trunk_seen")}
    warnings = [w for name, rec in seen.items() if (w := trunk_warning(name, rec))]
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
        | ({"play": played} if played else {})
        | ({"trunk_seen": seen, "warnings": warnings} if seen else {"warnings": []})
    )
    report_dir.mkdir(parents=True, exist_ok=True)
    durable.atomic_write_text(report_dir / "metrics.json", json.dumps(metrics, indent=1))
    images = draw_plots(report_dir / "plots", scored.scores, runs, cfg.ci, pool_names())
    doc = _document(scored, preds, runs, notes, images, (played, play_files), warnings)
    durable.atomic_write_text(report_dir / "report.md", doc.markdown(report_dir))
    durable.atomic_write_text(report_dir / "index.html", doc.html("vh eval report"))
    return metrics


def _head_json(s: HeadScore, pred: Predictions, ci: float) -> dict:
    """One head in ``metrics.json``: what it is, its headline figures with intervals, the rest."""
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


def _jsonable(obj):
    """Plain JSON types; NaN and infinities become null (JSON has no spelling for them)."""
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


# --------------------------------------------------------------------------- the page


def _document(scored: Scored, preds, runs, notes, images, play=(None, []), warnings=()) -> Doc:
    """The page: warnings, the plain-English bullets, the comparison table, the verdict,
    offline vs play (when there are play results), then one section per run."""
    scores, top, ci = scored.scores, scored.top, scored.ctx.cfg.ci
    played, play_files = play
    doc = Doc()
    doc.h(1, "vh eval report")
    for w in warnings:  # before anything a reader might act on
        doc.p(f"**Warning: {w}**")
    doc.h(2, "In plain English")  # the first page: what to do, each point linked below
    doc.bullets(
        plain_english(
            scored.verdicts,
            {s.name: s for s in scores},
            scored.ctx,
            play=play_sentence(played, ci, link=True) if played else None,
        )
    )
    doc.h(2, "Comparison across runs")
    doc.table(*comparison_table(scores, top, runs, ci))
    doc.h(2, "Verdict")
    for para in writeup(scored.verdicts, {s.name: s for s in scores}, top, scored.ctx, notes):
        doc.p(para)
    for path, caption in images[""]:
        doc.img(path, caption)
    if played:
        play_section(doc, played, scores, play_files, top, ci)
    for s, pred in zip(scores, preds, strict=True):
        _run_section(doc, s, pred, runs.get(s.name), images.get(s.name, []), ci)
    return doc


def _run_section(
    doc: Doc, s: HeadScore, pred: Predictions, rf: RunFiles | None, images: list, ci: float
) -> None:
    """One run: where it comes from, its tables, its plots, its fit config and sampling."""
    doc.h(2, f"Run {head_label(s)}: {s.family}")
    doc.table(["field", "value"], run_info_rows(pred, rf), numeric=False)
    warning = trunk_warning(s.name, pred.meta.get("trunk_seen"))
    if warning:
        doc.p(f"**Warning: {warning}**")
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
    _outcome_and_distribution(doc, s, ci)
    for fam, table in s.figures["slices"].items():
        doc.h(3, f"{s.name} by {fam}")
        doc.table(*slice_rows(table))
    for path, caption in images:
        doc.img(path, f"{s.name}: {caption}")
    if rf is not None:
        doc.code(json.dumps(rf.config.get("fit", {}), indent=1))
        if rf.manifest:
            doc.code(rf.manifest.strip())


def _outcome_and_distribution(doc: Doc, s: HeadScore, ci: float) -> None:
    """A threshold head by final outcome; a binned return head as a distribution."""
    from vh.eval.tables import distribution_rows, outcome_rows

    if s.figures.get("outcome"):
        doc.h(3, f"{s.name} by final outcome (the run's highest tile)")
        doc.p(
            "Mean predicted P(>= T) of the states of runs that ended in each bucket, against "
            "the actual rate (1 for a milestone those runs reached, 0 otherwise): a negative "
            "difference under-estimates a milestone the runs did reach, a positive one "
            "over-estimates one they did not."
        )
        doc.table(*outcome_rows(s))
    if s.figures.get("distribution"):
        doc.h(3, f"{s.name} as a distribution")
        doc.table(*distribution_rows(s, ci))
