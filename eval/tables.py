"""The report's tables, as a header and rows of strings (rendered by :mod:`.render`)."""

from __future__ import annotations

import json

from vh.eval.formatting import head_label, label_of, num, with_ci
from vh.eval.inputs import RunFiles
from vh.eval.predictions import Predictions
from vh.eval.scoring import PRIOR_NAME, HeadScore
from vh.heads import targets


def comparison_table(
    scores: list[HeadScore], top: list[int], runs: dict[str, RunFiles], ci: float
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the table across all runs, then the no-skill reference rows.

    The first figure is the bucket NLL over the shared buckets, on one scale for every
    threshold head; each kind's own loss has its own column, named for what it is (ordinal:
    mean BCE per threshold, tiles: CE over buckets), so no column mixes scales. The prior rows
    (the train split's base rates, scored on the same test states) and each head's skill over
    its prior (``1 - head / prior``) follow; a head whose NLL skill interval does not lie above
    0 is flagged.
    """
    kinds = list(dict.fromkeys(s.kind for s in scores if "nll" in s.headline))
    cols = (
        ["bucket_nll"]
        + [f"nll|{k}" for k in kinds]
        + ["hard_nll"]  # binned heads scored as trained: their NLL on hard bins, named apart
        + ["brier"]
        + [f"auroc@{t}" for t in top]
        + [f"ece@{t}" for t in top]
        + ["top1", "within1", "spearman_score", "mae", "rmse", "crps", "spearman"]
        + ["nll_skill", "brier_skill"]
    )
    everyone = scores + [s.prior for s in scores if s.prior is not None]
    cols = [c for c in cols if c.startswith("nll|") or any(c in s.headline for s in everyone)]
    flagged = any("no_skill" in s.figures for s in scores)
    header = ["run", "kind", "arch", "params"] + [column_label(c) for c in cols]
    header += ["skill over the base rates"] if flagged else []
    rows = []
    for s in scores:
        summary = runs[s.name].summary if s.name in runs else {}
        row = [
            head_label(s),
            s.kind,
            str(summary.get("arch", "")),
            f"{summary['n_params']:,}" if "n_params" in summary else "n/a",
        ] + [_cell([s], c, ci) for c in cols]
        rows.append(row + ([skill_flag(s)] if flagged else []))
    for group in prior_groups(scores):
        kind = "/".join(dict.fromkeys(p.kind for p in group))
        row = [prior_label(group, scores), f"prior ({kind})", "constant", "0"]
        rows.append(row + [_cell(group, c, ci) for c in cols] + ([""] if flagged else []))
    return header, rows


def column_label(col: str) -> str:
    """Header of a comparison column: the bucket NLL marked as the cross-family figure, a
    kind's own loss by what it is."""
    if col == "bucket_nll":
        return "bucket NLL (all heads)"
    if col.startswith("nll|"):
        kind = col[4:]
        return targets.get(kind, field="kind").loss_label or f"{kind} loss: NLL"
    return label_of(col)


def _cell(group: list[HeadScore], col: str, ci: float) -> str:
    """The figure of the first score of ``group`` that has it (a kind's loss: of that kind)."""
    metric, _, kind = col.partition("|")
    for s in group:
        if (not kind or s.kind == kind) and metric in s.headline:
            return with_ci(s, metric, ci)
    return "–"


def skill_flag(s: HeadScore) -> str:
    """``no skill over the base rates`` for a flagged head, else ``skill`` (or ``n/a``)."""
    if "no_skill" not in s.figures:
        return "n/a"
    return "no skill over the base rates" if s.figures["no_skill"] else "skill"


def prior_groups(scores: list[HeadScore]) -> list[list[HeadScore]]:
    """The heads' priors, one group per pool and distinct base rates (priors of ordinal and
    tiles heads fitted on one split share a row: the same bucket NLL and Brier)."""
    groups: dict[tuple, list[HeadScore]] = {}
    for s in scores:
        if s.prior is None:
            continue
        h = s.prior.headline
        key = (s.pool,) + tuple(
            round(float(h[k]), 9) for k in ("bucket_nll", "brier", "mae") if k in h
        )
        if len(key) == 1:  # nothing shared to match on: one row per kind
            key += (s.kind, round(float(h.get("nll", 0.0)), 9))
        groups.setdefault(key, []).append(s.prior)
    return list(groups.values())


def prior_label(group: list[HeadScore], scores: list[HeadScore]) -> str:
    """``train base rates (no skill)``, naming the heads when a pool has several priors."""
    pool = next(s.pool for s in scores if s.prior is group[0])
    n_pool = len([g for g in prior_groups(scores) if _pool_of(g[0], scores) == pool])
    names = ", ".join(p.name for p in group)
    return f"{PRIOR_NAME} (no skill)" + (f" of {names}" if n_pool > 1 else "")


def _pool_of(prior: HeadScore, scores: list[HeadScore]) -> str:
    return next(s.pool for s in scores if s.prior is prior)


def threshold_rows(s: HeadScore) -> tuple[list[str], list[list[str]]]:
    """One row per threshold: base rate, AUROC, ECE both ways, Brier and its parts, P/R."""
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
        [[f">= {r['threshold']}"] + [num(r[k]) for k in keys] for r in s.figures["per_threshold"]],
    )


def temperature_rows(temp: dict) -> tuple[list[str], list[list[str]]]:
    """The calibration figures before and after temperature scaling (the "after" column is
    named a fix only when T is recommended)."""
    if temp.get("recommended", True):
        after = f"after (T = {temp['T']:.3f}, recommended)"
    else:
        after = f"at T = {temp['T']:.3f} (not recommended: no fix)"
    return (
        ["figure", "before", after],
        [[label_of(k), num(v), num(temp["after"].get(k))] for k, v in temp["before"].items()],
    )


def slice_rows(table: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per slice of a family: its states, its runs, its figures."""
    keys = [k for k in table[0] if k not in ("slice", "count", "runs")]
    return (
        ["slice", "states", "runs"] + [label_of(k) for k in keys],
        [
            [r["slice"], f"{r['count']:,}", f"{r['runs']:,}"] + [num(r[k]) for k in keys]
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


def outcome_rows(s: HeadScore) -> tuple[list[str], list[list[str]]]:
    """By each run's final highest-tile bucket: predicted vs actual ``P(>= T)`` per threshold,
    and their difference (below 0: under-estimated; above 0: over-estimated)."""
    thresholds = [r["threshold"] for r in s.figures["per_threshold"]]
    header = ["final highest tile", "states", "runs"]
    header += [f"P(>= {t}): predicted / actual (difference)" for t in thresholds]
    rows = []
    for r in s.figures["outcome"]:
        cells = [
            "–" if p is None else f"{num(p)} / {num(a)} ({b:+.4f})"
            for p, a, b in zip(r["predicted"], r["actual"], r["bias"], strict=True)
        ]
        rows.append([r["outcome"], f"{r['count']:,}", f"{r['runs']:,}"] + cells)
    return header, rows


def distribution_rows(s: HeadScore, ci: float) -> tuple[list[str], list[list[str]]]:
    """A binned return head as a distribution: NLL as trained and on hard bins, CRPS, the end
    bins' predicted mass against their observed share, PIT flatness, mean vs mode errors."""
    d = s.figures["distribution"]
    ends = d["end_bins"]
    rows = [
        ["NLL (soft labels, as trained)", with_ci(s, "nll", ci)],
        ["hard-bin NLL", with_ci(s, "hard_nll", ci)],
        [f"CRPS ({d['crps_units']})", with_ci(s, "crps", ci)],
        [
            "lowest bin: mean predicted mass / observed share",
            f"{with_ci(s, 'mass_low', ci)} / {num(ends['observed_low'])}",
        ],
        [
            "highest bin: mean predicted mass / observed share",
            f"{with_ci(s, 'mass_high', ci)} / {num(ends['observed_high'])}",
        ],
        ["PIT: largest deviation from flat (0 = calibrated)", num(d["pit_max_dev"])],
    ]
    # the points' order in the figures: h^-1(E[h]) (the headline), the mean, the mode
    keys = (("mae", "rmse"), ("mae_mean", "rmse_mean"), ("mae_mode", "rmse_mode"))
    for (mae, rmse), point in zip(keys, d["points"], strict=True):
        errors = f"{with_ci(s, mae, ci)} / {with_ci(s, rmse, ci)}"
        rows.append([f"{point['point']}: MAE / RMSE", errors])
    return ["figure", "value"], rows
