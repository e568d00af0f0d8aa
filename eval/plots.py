"""PNG plots of the eval report (matplotlib, object API on the Agg canvas: no pyplot state).

Every function takes plain arrays and a path, writes one PNG and returns the path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 90
# Curves with more points than this are decimated before drawing (5M-point lines are slow
# and indistinguishable from 500 points at this size).
MAX_POINTS = 500


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


def by_slice(
    path: str | os.PathLike,
    title: str,
    metric: str,
    labels: Sequence[str],
    series: dict[str, Sequence[float | None]],
) -> str:
    """Grouped bars of one metric per slice, one bar colour per head."""
    fig, (ax,) = _figure(1, size=(8.0, 3.6), bottom=0.28)
    fig.subplots_adjust(right=0.75)  # room for the legend on the right
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        v = np.array([np.nan if a is None else a for a in values], dtype=np.float64)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, v, width, label=name)
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
