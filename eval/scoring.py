"""Scoring: every figure of every head, on the same test rows and the same thresholds.

Heads of every family are scored on the same rows: an ordinal head's ``q_k = P(highest >= T_k)``
gives bucket probabilities, a tiles head's bucket probabilities give ``q_k``, so threshold heads
of both kinds meet on one scale. Headline figures are bootstrapped by run (:mod:`.bootstrap`);
the rest (per-threshold tables, slices, confusion, temperature scaling) are point values.

Each target kind scores its own heads (``TargetKind.score`` in ``vh.heads.targets``): the
``ordinal`` and ``tiles`` kinds through the threshold scorer here (:func:`score_thresholds`),
the others in their own module, with the tools here (:func:`temperature`, :func:`slice_tables`,
:func:`finish`). Each returns a :class:`HeadScore` naming its family (heads ranked together),
its pool (heads that can be compared at all) and its primary figure (what ranks it first).

Axes: n = test states, K = thresholds, C = score bins, B = resamples, R = test runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vh.config import EvalConfig
from vh.eval import bootstrap as B
from vh.eval import calibration as C
from vh.eval import metrics as M
from vh.eval import plots as P
from vh.eval import slices as S
from vh.eval.predictions import Predictions
from vh.heads import targets
from vh.progress import Progress

TOP_TILES = (16384, 32768)  # the seed's "top thresholds" for AUROC and calibration


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
    stats: dict = field(default_factory=dict)  # the headline B.Stat objects (skill scores)
    prior: HeadScore | None = None  # the no-skill reference: train base rates, same rows


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
    sets = [{int(t) for t in p.thresholds} for p in preds if targets.get(p.kind).thresholded]
    shared = sorted(set.intersection(*sets)) if sets else []
    return [t for t in shared if t in TOP_TILES] or shared[-2:]


def score_head(pred: Predictions, ctx: Context) -> HeadScore:
    """All figures of one head (its kind scores it), its prior and its skill over the prior."""
    kind = targets.get(pred.kind, field="kind")
    s = kind.score(pred, ctx)
    prior = prior_predictions(pred)
    if prior is not None:
        s.prior = kind.score(prior, ctx)
        add_skill(s, ctx)
    return s


# --------------------------------------------------------------------------- prior and skill

PRIOR_NAME = "train base rates"
SKILLS = {"nll": "nll_skill", "brier": "brier_skill"}  # figure -> its skill score


def prior_predictions(pred: Predictions) -> Predictions | None:
    """The no-skill head of ``pred``: the train split's base rates, on the same test rows.

    ``vh eval`` stores ``out_prior_logits`` ``(n_out,)`` (the logits of the train marginal over
    the head's outputs: per-threshold rates, bucket or bin frequencies) and, for a kind that
    keeps no logits (return), the prior's own outputs as ``out_prior_<key>``. None when the
    predictions file has no prior (made by hand, or by an older vh).
    """
    if "prior_logits" not in pred.out:
        return None
    out = {k: v for k, v in pred.out.items() if not k.startswith(("val_", "prior_"))}
    if "logits" in out:
        z = np.asarray(pred.out["prior_logits"], dtype=np.float64)
        out["logits"] = np.broadcast_to(z, (pred.n, z.size))
    out |= {k[6:]: v for k, v in pred.out.items() if k.startswith("prior_") and k != "prior_logits"}
    meta = {"baseline": False, "prior": True}
    return Predictions(pred.name, pred.kind, pred.thresholds, pred.medians, pred.rows, out, meta)


class Skill(B.Stat):
    """``1 - head / prior`` of two means over the same rows, paired: each resample of runs
    weighs the head's and the prior's rows alike (a ratio estimator, so its replicates are
    exact and it has a linearised influence for the studentized interval)."""

    def __init__(self, head: B.Mean, prior: B.Mean):
        self.cols = np.stack([head.cols[:, 0], prior.cols[:, 0]], axis=1)  # (R, 2) run sums
        self.point = float(1.0 - self.cols[:, 0].sum() / self.cols[:, 1].sum())

    def finish(self, sums: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return 1.0 - sums[:, 0] / sums[:, 1]

    def influence(self, sums: np.ndarray) -> np.ndarray:
        """``-(h_r - R p_r) / P`` with ``R = H / P`` the replicate's ratio of run sums."""
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = (sums[:, 0] / sums[:, 1])[:, None]
            return -(self.cols[None, :, 0] - ratio * self.cols[None, :, 1]) / sums[:, 1:2]


def _progress(name: str, n: int) -> Progress:
    """Progress of one head's bootstrap (figures done, ETA): silent unless it takes > 3 s."""
    return Progress(n, f"bootstrap {name}", unit="figures", every=3.0, delay=3.0)


def add_skill(s: HeadScore, ctx: Context) -> None:
    """Add ``nll_skill`` and ``brier_skill`` (where both the head and its prior have the
    figure as a mean) to the headline, and ``figures["no_skill"]``: True when the NLL skill's
    interval includes 0 or lies below it (no skill over the base rates)."""
    stats = {
        skill: Skill(s.stats[k], s.prior.stats[k])
        for k, skill in SKILLS.items()
        if isinstance(s.stats.get(k), B.Mean) and isinstance(s.prior.stats.get(k), B.Mean)
    }
    if not stats:
        return
    reps = B.replicate(stats, ctx.weights, progress=_progress(s.name, len(stats)))  # paired
    s.headline |= {k: st.point for k, st in stats.items()}
    s.reps |= reps
    s.stats |= stats
    if "nll_skill" in stats:
        lo, _ = B.interval(reps["nll_skill"], ctx.cfg.ci)
        s.figures["no_skill"] = bool(not lo > 0.0)
    s.figures["prior"] = {k: v for k, v in s.prior.headline.items() if k not in SKILLS.values()}


def finish(
    pred: Predictions,
    ctx: Context,
    stats: dict[str, B.Stat],
    figures: dict,
    plots: dict,
    family: str,
    primary: str,
) -> HeadScore:
    """Bootstrap the headline statistics and package a head's score (pool: its kind's)."""
    reps = B.replicate(stats, ctx.weights, progress=_progress(pred.name, len(stats)))
    return HeadScore(
        name=pred.name,
        kind=pred.kind,
        family=family,
        pool=targets.get(pred.kind).pool.name,
        primary=primary,
        baseline=bool(pred.meta.get("baseline", False)),
        headline={k: s.point for k, s in stats.items()},
        reps=reps,
        figures=figures,
        plots=plots,
        stats=stats,
    )


def slice_tables(ctx: Context, values: dict[str, tuple[np.ndarray, S.Reducer]]) -> dict:
    """Per-row values reduced over every slice family (phase, length, tile)."""
    return {fam: S.slice_table(sl, ctx.index.code, values) for fam, sl in ctx.slices.items()}


# --------------------------------------------------------------------------- temperature


def temperature(
    pred: Predictions, ctx: Context, before: dict, figures_at: Callable[[np.ndarray], dict]
) -> dict | None:
    """Fit T on the validation split; the calibration figures before and after scaling by it.

    The one implementation for every kind with logits: by its kind's ``temperature``, per
    threshold (``binary``: sigmoid, ordinal heads) or per row (``categorical``: softmax).

    Args:
        pred: the head (``out`` holds ``val_logits`` and ``val_y`` when it can be scaled).
        ctx: the shared context (``cfg.temperature`` switches scaling off).
        before: the figures at T = 1.
        figures_at: the same figures from scaled test logits ``logits / T``.

    Returns:
        ``{"T", "val_rows", "before", "after"}`` and the recommendation
        (:func:`vh.eval.calibration.recommend_temperature`: ``lo``, ``hi``, ``val_runs``,
        ``val_nll_before``, ``val_nll_after``, ``recommended``, ``why``; the interval needs
        ``val_run_id``), or None without validation logits. ``after`` is what the test figures
        would be at T, a fix only when ``recommended``.
    """
    kind = targets.get(pred.kind).temperature
    if not ctx.cfg.temperature or "val_logits" not in pred.out or kind is None:
        return None
    rec = C.recommend_temperature(
        logits=pred.out["val_logits"],
        y=pred.out["val_y"],
        kind=kind,
        run_id=pred.out.get("val_run_id"),
        n_boot=ctx.cfg.n_boot,
        seed=ctx.cfg.seed,
        ci=ctx.cfg.ci,
    )
    return {
        "T": rec["T"],
        "val_rows": int(pred.out["val_logits"].shape[0]),
        "before": before,
        "after": figures_at(pred.out["logits"] / rec["T"]),
        **{k: v for k, v in rec.items() if k != "T"},
    }


# --------------------------------------------------------------------------- threshold heads


# ``(logits, Y, yb) -> (q (n, K), bucket probabilities p (n, K+1), the family NLL per row)``,
# the threshold kind's own part (``Ordinal.probs``, ``Tiles.probs``)
ThresholdProbs = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple]


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


def score_thresholds(
    pred: Predictions, ctx: Context, probs: ThresholdProbs, *, rank_inconsistency: bool
) -> HeadScore:
    """A threshold head (ordinal or tiles): NLL, Brier, top-1, top±1, ECE, AUROC per
    threshold, E[score].

    Args:
        pred: the head.
        ctx: the shared context.
        probs: the kind's map from logits to ``q``, bucket probabilities and its NLL per row.
        rank_inconsistency: report the share of rows with some ``q_(k+1) > q_k`` (ordinal).
    """
    T = np.asarray(pred.thresholds, dtype=np.int64)
    bins, idx = ctx.cfg.ece_bins, ctx.index
    Y = targets.reached(ctx.rows["highest_tile"], T)  # (n, K) bool
    yb = targets.tile_bucket(ctx.rows["highest_tile"], T)  # (n,) in 0..K
    q, p, nll_row = probs(pred.out["logits"], Y, yb)
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
        # by each run's final bucket: mean predicted P(>= T_k) against the actual rate
        "outcome": S.outcome_table(q=q, y=Y, bucket=yb, run_code=ctx.index.code, thresholds=T),
        "rank_inconsistency": (
            float(M.rank_inconsistency(q=q).mean()) if rank_inconsistency else None
        ),
        "score_medians": [float(m) for m in pred.medians],
        "temperature": temperature(
            pred,
            ctx,
            before,
            lambda z: _calibration_figures(*probs(z, Y, yb), Y, yb, T, ctx.cfg.ece_bins),
        ),
        "slices": slice_tables(
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
    return finish(pred, ctx, stats, figures, plots, family, "nll")


def _bucket_labels(T: np.ndarray) -> list[str]:
    """Names of the K + 1 highest-tile buckets (the confusion matrix's axes)."""
    return [f"<{T[0]}"] + [str(int(t)) for t in T[:-1]] + [f">={T[-1]}"]


# --------------------------------------------------------------------------- composites


def add_composites(scores: list[HeadScore], top: list[int]) -> None:
    """Add ``auroc_top`` and ``ece_high`` (means over the shared top thresholds), to the
    heads and to their priors."""
    for s in scores + [s.prior for s in scores if s.prior is not None]:
        if not targets.get(s.kind).thresholded or not top:
            continue
        for name, prefix in (("auroc_top", "auroc@"), ("ece_high", "ece@")):
            s.headline[name] = float(np.mean([s.headline[f"{prefix}{t}"] for t in top]))
            s.reps[name] = B.average([s.reps[f"{prefix}{t}"] for t in top])
