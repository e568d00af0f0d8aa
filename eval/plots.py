"""PNG plots of the eval report (matplotlib, object API on the Agg canvas: no pyplot state).

Every drawing function takes plain arrays and a path, writes one PNG and returns the path;
:func:`draw_plots` draws all of a report's plots from the heads' scores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vh.eval import bootstrap as B
from vh.eval.formatting import head_label, label_of
from vh.heads import targets

if TYPE_CHECKING:
    from vh.eval.inputs import RunFiles
    from vh.eval.scoring import HeadScore

DPI = 90
# Curves with more points than this are decimated before drawing (5M-point lines are slow
# and indistinguishable from 500 points at this size).
MAX_POINTS = 500
# Grouped bars: series name (one colour) -> one value per group (None: no bar).
Bars = dict[str, Sequence[float | None]]


def _figure(
    n_panels: int = 1,
    cols: int = 3,
    size: tuple[float, float] = (3.6, 3.2),
    bottom: float = 0.14,
    left: float = 0.09,
) -> tuple[Figure, list]:
    cols = min(cols, n_panels)
    rows = (n_panels + cols - 1) // cols
    # fixed margins: a constrained or tight layout draws every figure twice
    fig = Figure(figsize=(size[0] * cols, size[1] * rows))
    fig.subplots_adjust(left=left, right=0.97, bottom=bottom, top=0.86, wspace=0.3, hspace=0.5)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _save(fig: Figure, path: str | os.PathLike) -> str:
    fig.savefig(path, dpi=DPI)
    return os.fspath(path)


def _decimate(*arrays: np.ndarray) -> list[np.ndarray]:
    n = arrays[0].shape[0]
    if n <= MAX_POINTS:
        return list(arrays)
    keep = np.unique(np.linspace(0, n - 1, MAX_POINTS).astype(np.int64))
    return [a[keep] for a in arrays]


def reliability(
    path: str | os.PathLike,
    title: str,
    panels: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
) -> str:
    """Reliability diagrams, one panel per threshold (and the top class).

    Args:
        path: PNG to write.
        title: figure title.
        panels: ``(label, count, sum_p, sum_y)`` per panel, per-bin sums over uniform bins.
    """
    fig, axes = _figure(len(panels))
    for ax, (label, count, sum_p, sum_y) in zip(axes, panels, strict=True):
        nz = count > 0
        mean_p, mean_y = sum_p[nz] / count[nz], sum_y[nz] / count[nz]
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        ax.plot(mean_p, mean_y, marker="o", ms=3)
        edges = np.linspace(0.0, 1.0, count.size + 1)  # uniform bins
        ax.stairs(
            count / count.sum(), edges, fill=True, color="C1", alpha=0.3, label="share of rows"
        )
        ax.set(xlim=(0, 1), ylim=(0, 1), title=label, xlabel="predicted", ylabel="observed")
    axes[0].legend(loc="upper left", fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def confusion(
    path: str | os.PathLike, title: str, matrix: np.ndarray, labels: Sequence[str]
) -> str:
    """Confusion matrix, rows normalised to the share of each true class."""
    fig, (ax,) = _figure(1, size=(5.5, 4.8), bottom=0.2, left=0.16)
    m = np.asarray(matrix, dtype=np.float64)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1e-12)
    im = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    for (i, j), v in np.ndenumerate(share):
        ax.text(
            j,
            i,
            f"{v:.2f}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if v > 0.6 else "black",
        )
    ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="predicted bucket", ylabel="true bucket", title=title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)


def pr_curves(
    path: str | os.PathLike, title: str, curves: Sequence[tuple[str, np.ndarray, np.ndarray]]
) -> str:
    """Precision-recall curves, one line per threshold: ``(label, precision, recall)``."""
    fig, (ax,) = _figure(1, size=(5.0, 4.2))
    for label, precision, recall in curves:
        precision, recall = _decimate(precision, recall)
        ax.plot(recall, precision, label=label, lw=1.2)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def training_curves(path: str | os.PathLike, title: str, members: dict[str, list[dict]]) -> str:
    """Train and validation NLL per member from ``metrics.jsonl`` records.

    Args:
        members: member name -> records ``{"split", "nll", "step" or "epoch"}``.
    """
    fig, (ax,) = _figure(1, size=(6.0, 3.8))
    for i, (name, records) in enumerate(sorted(members.items())):
        for split, style in (("train", ":"), ("val", "-")):
            pts = [
                (r.get("step", r.get("epoch")), r["nll"])
                for r in records
                if r.get("split") == split and r.get("nll") is not None
            ]
            if pts:
                x, y = np.asarray(pts, dtype=np.float64).T
                ax.plot(x, y, ls=style, color=f"C{i % 10}", label=f"{name} {split}")
    ax.set(xlabel="step", ylabel="NLL", title=title)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def _grouped_bars(ax, n_groups: int, series: Bars) -> np.ndarray:
    """One bar per series side by side in each of ``n_groups`` groups, one colour per series
    (None: no bar); returns the groups' centres for the ticks."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(n_groups)
    for i, (name, values) in enumerate(series.items()):
        v = np.array([np.nan if a is None else a for a in values], dtype=np.float64)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, v, width, label=name)
    return x


def by_slice(
    path: str | os.PathLike, title: str, metric: str, labels: Sequence[str], series: Bars
) -> str:
    """Grouped bars of one metric per slice, one bar colour per head."""
    fig, (ax,) = _figure(1, size=(8.0, 3.6), bottom=0.28)
    fig.subplots_adjust(right=0.75)  # room for the legend on the right
    x = _grouped_bars(ax, len(labels), series)
    ax.set_xticks(x, labels, rotation=15, fontsize=7, ha="right")
    ax.set(ylabel=metric, title=title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def intervals(
    path: str | os.PathLike,
    title: str,
    metric: str,
    names: Sequence[str],
    values: Sequence[float],
    lo: Sequence[float],
    hi: Sequence[float],
) -> str:
    """Point estimates with their bootstrap intervals, one row per head."""
    fig, (ax,) = _figure(1, size=(6.5, 1.2 + 0.45 * len(names)), left=0.3, bottom=0.3)
    y = np.arange(len(names))[::-1]
    v = np.asarray(values, dtype=np.float64)
    err = np.abs(
        np.stack([v - np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64) - v])
    )
    ax.errorbar(v, y, xerr=err, fmt="o", capsize=4)
    ax.set_yticks(y, names, fontsize=8)
    ax.set(xlabel=metric, title=title)
    return _save(fig, path)


def trajectories(
    path: str | os.PathLike,
    title: str,
    games: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
) -> str:
    """Predicted value and realised return along test games: ``(label, step, pred, real)``."""
    fig, axes = _figure(len(games), cols=2, size=(5.0, 3.0))
    for ax, (label, step, pred, real) in zip(axes, games, strict=True):
        ax.plot(step, real, color="0.3", lw=1.2, label="realised return")
        ax.plot(step, pred, color="C0", lw=1.0, label="predicted value")
        ax.set(title=label, xlabel="step", ylabel="return")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def outcome_bias(
    path: str | os.PathLike,
    title: str,
    outcomes: Sequence[str],
    thresholds: Sequence[int],
    bias: Sequence[Sequence[float | None]],
) -> str:
    """Predicted minus actual ``P(>= T)`` by final outcome: one bar per threshold.

    Args:
        outcomes: the final highest-tile buckets (x axis).
        thresholds: the thresholds (one bar colour each).
        bias: ``[outcome][threshold]`` differences (None: an empty bucket).
    """
    fig, (ax,) = _figure(1, size=(7.5, 3.8), bottom=0.2, left=0.11)
    fig.subplots_adjust(right=0.8)  # room for the legend on the right
    series = {f">= {t}": [row[k] for row in bias] for k, t in enumerate(thresholds)}
    x = _grouped_bars(ax, len(outcomes), series)
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set_xticks(x, outcomes, fontsize=8)
    ax.set(
        ylim=(-1.05, 1.05),
        xlabel="final highest tile of the run",
        ylabel="predicted - actual P(>= T)",
        title=title,
    )
    ax.text(0.01, 0.02, "below 0: under-estimated", transform=ax.transAxes, fontsize=7)
    ax.text(0.01, 0.93, "above 0: over-estimated", transform=ax.transAxes, fontsize=7)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def pit_histogram(path: str | os.PathLike, title: str, share: np.ndarray, max_dev: float) -> str:
    """Histogram of the randomised PIT (density: 1 everywhere for a calibrated head)."""
    fig, (ax,) = _figure(1, size=(5.0, 3.6), left=0.13)
    share = np.asarray(share, dtype=np.float64)
    ax.stairs(share * share.size, np.linspace(0.0, 1.0, share.size + 1), fill=True, alpha=0.6)
    ax.axhline(1.0, color="0.3", lw=1, ls="--", label="uniform")
    ax.set(
        xlim=(0, 1),
        ylim=(0, max(2.0, float(share.max() * share.size) * 1.1)),
        xlabel="PIT",
        ylabel="density",
        title=f"{title} (largest deviation {max_dev:.2f})",
    )
    ax.legend(fontsize=7)
    return _save(fig, path)


# --------------------------------------------------------------------------- a report's plots


def draw_plots(
    plot_dir: Path,
    scores: list[HeadScore],
    runs: dict[str, RunFiles],
    ci: float,
    pools: Sequence[str],
) -> dict[str, list[tuple[str, str]]]:
    """Every PNG of a report.

    Args:
        plot_dir: where the PNGs go (created).
        scores: every head's score.
        runs: copied run files by name (training curves).
        ci: interval level.
        pools: the pools in report order (cross-run plots are drawn per pool).

    Returns:
        name -> [(path, caption)]; ``""`` holds the cross-run plots.
    """
    plot_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[tuple[str, str]]] = {"": []}
    for s in scores:
        out[s.name] = _head_plots(plot_dir, s, runs.get(s.name))
    out[""] += _cross_plots(plot_dir, scores, ci, pools)
    return out


def _head_plots(plot_dir: Path, s: HeadScore, rf: RunFiles | None) -> list[tuple[str, str]]:
    """One head's PNGs as (path, caption): threshold diagnostics, games, training curves."""
    name, mine = s.name, []
    if "reliability" in s.plots:
        mine.append(
            (
                reliability(
                    plot_dir / f"{name}_reliability.png",
                    f"{name}: reliability (uniform bins)",
                    s.plots["reliability"],
                ),
                "reliability diagrams",
            )
        )
        mine.append(
            (
                confusion(
                    plot_dir / f"{name}_confusion.png",
                    f"{name}: highest-tile bucket",
                    np.array(s.figures["confusion"]),
                    s.figures["bucket_labels"],
                ),
                "confusion matrix (rows: true bucket)",
            )
        )
        mine.append(
            (
                pr_curves(plot_dir / f"{name}_pr.png", f"{name}: precision-recall", s.plots["pr"]),
                "precision-recall per threshold",
            )
        )
    mine += _outcome_and_pit(plot_dir, s)
    if "trajectories" in s.plots:
        mine.append(
            (
                trajectories(
                    plot_dir / f"{name}_games.png",
                    f"{name}: predicted vs realised return",
                    s.plots["trajectories"],
                ),
                "test games, step by step",
            )
        )
    if rf is not None and rf.curves:
        mine.append(
            (
                training_curves(plot_dir / f"{name}_curves.png", f"{name}: training", rf.curves),
                "training curves (metrics.jsonl)",
            )
        )
    return mine


def _outcome_and_pit(plot_dir: Path, s: HeadScore) -> list[tuple[str, str]]:
    """A threshold head's bias by final outcome; a distributional head's PIT histogram."""
    out = []
    if s.figures.get("outcome"):
        table = s.figures["outcome"]
        out.append(
            (
                outcome_bias(
                    plot_dir / f"{s.name}_outcome.png",
                    f"{s.name}: by final outcome",
                    [r["outcome"] for r in table],
                    [r["threshold"] for r in s.figures["per_threshold"]],
                    [r["bias"] for r in table],
                ),
                "predicted - actual P(>= T) by the run's final highest tile",
            )
        )
    if "pit" in s.plots:
        out.append(
            (
                pit_histogram(plot_dir / f"{s.name}_pit.png", f"{s.name}: PIT", *s.plots["pit"]),
                "randomised PIT histogram (flat = calibrated)",
            )
        )
    return out


def _cross_plots(
    plot_dir: Path, scores: list[HeadScore], ci: float, pools: Sequence[str]
) -> list[tuple[str, str]]:
    """Per pool: the headline figure with intervals, and one figure by slice per family."""
    out = []
    for pool in pools:
        group = [s for s in scores if s.pool == pool]
        if not group:
            continue
        metric = "auroc_top" if "auroc_top" in group[0].headline else group[0].primary
        if all(metric in s.headline for s in group):
            lims = [B.interval(s.reps[metric], ci) for s in group]
            out.append(
                (
                    intervals(
                        plot_dir / f"{pool}_{metric}.png",
                        f"{pool} heads",
                        label_of(metric),
                        [head_label(s) for s in group],
                        [s.headline[metric] for s in group],
                        [a for a, _ in lims],
                        [b for _, b in lims],
                    ),
                    f"{label_of(metric)} with intervals",
                )
            )
        # one scale across families: bucket NLL for threshold heads
        slice_metric = targets.pool(pool).slice_metric
        for fam in group[0].figures["slices"]:
            tables = {head_label(s): s.figures["slices"][fam] for s in group}
            labels = [r["slice"] for r in next(iter(tables.values()))]
            series = {n: [r.get(slice_metric) for r in t] for n, t in tables.items()}
            out.append(
                (
                    by_slice(
                        plot_dir / f"{pool}_slices_{fam}.png",
                        f"{pool} heads by {fam}",
                        label_of(slice_metric),
                        labels,
                        series,
                    ),
                    f"{label_of(slice_metric)} by {fam} slice",
                )
            )
    return out
