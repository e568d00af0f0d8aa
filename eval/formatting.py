"""How figures are written in the report: their names, numbers, intervals, head labels."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from vh.eval import bootstrap as B

if TYPE_CHECKING:
    from vh.eval.scoring import HeadScore

# Readable names of the figures (``metrics.json`` keys -> report text).
LABELS = {
    "nll": "NLL",
    "hard_nll": "hard-bin NLL",
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
    "crps": "CRPS",
    "mass_low": "mass in the lowest bin",
    "mass_high": "mass in the highest bin",
    "mae_mean": "MAE of the mean",
    "rmse_mean": "RMSE of the mean",
    "mae_mode": "MAE of the mode",
    "rmse_mode": "RMSE of the mode",
    "spearman": "Spearman",
    "pearson": "Pearson",
    "stability": "stability",
    "nll_skill": "NLL skill",
    "brier_skill": "Brier skill",
}


def label_of(metric: str) -> str:
    """Readable name of a figure: ``auroc@16384`` -> ``AUROC >= 16384``."""
    name, _, t = metric.partition("@")
    name = {"auroc": "AUROC", "ece": "ECE"}.get(name, LABELS.get(name, name))
    return f"{name} >= {t}" if t else name


def num(v) -> str:
    """A figure with as many digits as it needs; ``n/a`` for None, NaN and infinities."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    v = float(v)
    return f"{v:,.0f}" if abs(v) >= 1000 else (f"{v:.2f}" if abs(v) >= 10 else f"{v:.4f}")


def with_ci(s: HeadScore, metric: str, ci: float) -> str:
    """``value [lo, hi]`` of a bootstrapped figure; ``–`` when the head has none."""
    if metric not in s.headline:
        return "–"
    lo, hi = B.interval(s.reps[metric], ci)
    return f"{num(s.headline[metric])} [{num(lo)}, {num(hi)}]"


def head_label(s: HeadScore) -> str:
    """A head's name, marked when it is a raw-board baseline."""
    return f"{s.name} (baseline)" if s.baseline else s.name


def anchor(title: str) -> str:
    """The anchor of a heading (GitHub's rule: lower case, spaces to hyphens, other
    punctuation dropped), so ``[text](#anchor)`` links work in report.md and index.html."""
    slug = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return slug.replace(" ", "-")


def see(title: str) -> str:
    """A link to a section of the report: ``(see [title](#anchor))``."""
    return f"(see [{title}](#{anchor(title)}))"
