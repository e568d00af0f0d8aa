"""The ``logscore`` kind: ``log1p(final_score)`` of the state's run, over ``n_bins`` bins.

Trained on soft labels (two-hot, or Gaussian with ``fit.target.smoothing``) under a softmax,
and scored as trained: the headline ``nll`` is the cross-entropy against the same soft labels
(what the fit's validation NLL in ``metrics.jsonl`` measures, so the two are comparable), and
the temperature is fitted against the validation states' soft labels. The hard bin of the final
score gives the figures named as such: ``hard_nll`` (hard-bin NLL), top-1, top±1, top-class
ECE. The correlation of the expected final score with the real one completes the set.

A predictions file records the encoding's width (``out_label_sigma``); one without it (a file
of an older vh, or made by hand) cannot rebuild the soft labels and is scored on hard bins
only, its ``nll`` then being the hard-bin NLL (``figures["nll_labels"]`` says which).
"""

from __future__ import annotations

import numpy as np

from vh.errors import VhError
from vh.heads.targets import register
from vh.heads.targets.base import (
    Pool,
    TargetKind,
    TargetSpec,
    binned_spec,
    class_outputs,
    cross_entropy_objective,
    soft_labels,
    value_labels,
)


def score_bin(final_score: np.ndarray, bin_edges: np.ndarray) -> np.ndarray:
    """The log-score bin of a final score (edges in log1p(score) units): int64 ``(n,)``."""
    from vh.eval import metrics as M

    return M.bin_of(np.log1p(final_score), bin_edges)


def spec_of(bin_edges: np.ndarray, sigma: float) -> TargetSpec:
    """The binned spec a head with these bin edges was trained with (edges = centres ± w/2)."""
    e = np.asarray(bin_edges, dtype=np.float64)
    lo, hi = (e[0] + e[1]) / 2.0, (e[-2] + e[-1]) / 2.0
    encoding = "gaussian" if sigma > 0 else "twohot"
    return TargetSpec("logscore", (), e.size - 1, encoding, lo=lo, hi=hi, sigma=float(sigma))


def score_soft_labels(final_score: np.ndarray, out: dict) -> np.ndarray | None:
    """The soft labels the head was trained on, ``(n, C)`` float64, or None when the outputs
    do not record the encoding (``label_sigma``)."""
    if "label_sigma" not in out:
        return None
    spec = spec_of(out["bin_edges"], float(out["label_sigma"]))
    return soft_labels(np.log1p(np.asarray(final_score, dtype=np.float64)), spec)


class LogScore(TargetKind):
    """The run's log final score, binned."""

    name = "logscore"
    pool = Pool("logscore", "log-score heads", ("within1",), "nll")
    temperature = "categorical"
    loss_label = "logscore loss: CE against the soft labels (as trained)"

    def make_spec(self, cfg, *, monotone, train_values):
        k = len(cfg.thresholds)
        base = TargetSpec(self.name, tuple(cfg.thresholds), k, "bernoulli", monotone=monotone)
        return binned_spec(base, cfg, cfg.n_bins, cfg.smoothing, "fit.target.n_bins", train_values)

    def add_values(self, reader, rows, out):
        out["value"] = np.log1p(out["final_score"])

    def train_labels(self, spec, values):
        """f32[n]: log1p(final score), encoded over the bins inside the step."""
        return value_labels(spec, values)

    def objective(self, spec, cfg, pos_rate):
        from vh.heads import losses

        losses.refuse_options(cfg)
        return losses.categorical_objective(spec)

    def link(self, spec):
        import jax

        return jax.nn.softmax

    def eval_outputs(self, spec, logits, values, batch):
        """Logits, bin edges and the encoding's width (to rebuild the soft labels)."""
        return {
            "logits": logits,
            "bin_edges": spec.bin_edges,
            "label_sigma": np.asarray(spec.sigma, dtype=np.float64),
        }

    def eval_labels(self, values, thresholds, out):
        """The labels the head is scored against (the temperature's ``y``): float32 ``(n, C)``
        soft labels, as the fit encodes them, when ``out`` records the encoding's width; else
        int64 ``(n,)``, the hard bin of the final score."""
        soft = score_soft_labels(values["final_score"], out)
        if soft is not None:
            return soft.astype(np.float32)
        return score_bin(values["final_score"], out["bin_edges"])

    def check_outputs(self, pred, expect, path):
        edges = pred.out.get("bin_edges")
        if edges is None or edges.ndim != 1 or edges.size < 2:
            raise VhError(
                "missing, or not a 1-D array of bin edges", path=path, field="out_bin_edges"
            )
        nb = edges.size - 1
        soft = "label_sigma" in pred.out
        if soft:
            expect("out_label_sigma", pred.out["label_sigma"], ())
        # validation labels: soft (m, C) when the encoding is recorded, hard bins (m,) else
        class_outputs(pred, expect, nb, val_y=(nb,) if soft else ())

    def score(self, pred, ctx):
        """NLL against the soft labels (as trained), hard-bin NLL, top-1, top±1, ECE,
        E[score] correlations."""
        from scipy import special

        from vh.eval import bootstrap as B
        from vh.eval import metrics as M
        from vh.eval import scoring as S

        edges = np.asarray(pred.out["bin_edges"], dtype=np.float64)  # log1p(score) units
        nb, idx = edges.size - 1, ctx.index
        y = score_bin(ctx.rows["final_score"], edges)
        soft = score_soft_labels(ctx.rows["final_score"], pred.out)  # None: hard bins only
        p = special.softmax(pred.out["logits"], axis=1)
        hard_row, correct, near = (
            M.categorical_nll(p=p, y=y),
            M.top1(p=p, y=y),
            M.within_one(p=p, y=y),
        )
        nll_row = hard_row if soft is None else soft_nll(pred.out["logits"], soft)
        expected = p @ np.expm1((edges[:-1] + edges[1:]) / 2.0)  # (n,) expected final score
        p_top, n_cells = p.max(axis=1), ctx.cfg.ece_bins
        stats: dict[str, B.Stat] = {"nll": B.Mean(idx, nll_row)}
        if soft is not None:
            stats["hard_nll"] = B.Mean(idx, hard_row)
        stats |= {
            "top1": B.Mean(idx, correct),
            "within1": B.Mean(idx, near),
            "ece_top": B.Ece(
                idx, p_top, correct, M.calibration_bins(p=p_top, bins=n_cells), n_cells
            ),
            "spearman_score": B.Spearman(
                idx, expected, ctx.rows["final_score"], y_order=ctx.score_order
            ),
            "pearson_score": B.Pearson(idx, expected, ctx.rows["final_score"]),
        }
        before = {k: stats[k].point for k in ("nll", "hard_nll", "ece_top") if k in stats}
        temperature = S.temperature(
            pred,
            ctx,
            before,
            lambda z: _top_class_figures(z, y, soft, n_cells),
        )
        per_row = {"nll": (nll_row, "mean")}
        if soft is not None:
            per_row["hard_nll"] = (hard_row, "mean")
        figures = {
            "n_bins": nb,
            "nll_labels": _labels_name(pred.out),
            "temperature": temperature,
            "slices": S.slice_tables(
                ctx, per_row | {"top1": (correct, "mean"), "within1": (near, "mean")}
            ),
        }
        return S.finish(pred, ctx, stats, figures, {}, f"logscore ({nb} bins)", "nll")

    def family_criteria(self, s):
        return ["nll", "within1"]

    def export_objective(self, spec):
        return cross_entropy_objective(spec, "log_score_bins")


def soft_nll(logits: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """Cross-entropy per row against soft labels, as the training loss computes it: from the
    logits, unclamped (hard-bin figures clamp probabilities at 1e-12, as eval does)."""
    from scipy import special

    return -np.einsum("nc,nc->n", soft, special.log_softmax(logits, axis=1))


def _top_class_figures(z: np.ndarray, y: np.ndarray, soft: np.ndarray | None, bins: int) -> dict:
    """NLL (soft labels when known, and the hard-bin NLL) and top-class ECE of bin logits:
    what temperature scaling can move."""
    from scipy import special

    from vh.eval import metrics as M

    p = special.softmax(z, axis=1)
    out = {"nll": M.nll(p=p, y=y) if soft is None else float(soft_nll(z, soft).mean())}
    if soft is not None:
        out["hard_nll"] = M.nll(p=p, y=y)
    out["ece_top"] = M.ece(p=p.max(axis=1), y=M.top1(p=p, y=y), bins=bins)
    return out


def _labels_name(out: dict) -> str:
    """What the head's ``nll`` is measured against, in words."""
    if "label_sigma" not in out:
        return "hard bins (the predictions file does not record the soft-label encoding)"
    sigma = float(out["label_sigma"])
    return f"Gaussian soft labels (sigma {sigma:g} bins)" if sigma > 0 else "two-hot soft labels"


register(LogScore())
