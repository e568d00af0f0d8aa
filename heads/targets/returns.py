"""The ``return`` kind: the state's discounted return (cache column ``return``).

Through the MuZero transform ``h`` (:mod:`vh.transforms`), encoded over ``return_bins`` bins
(two-hot or Gaussian) under a softmax, or a scalar regressed with MSE (``return_encoding =
"scalar"``, optionally with a quartic term). Scored in raw return units: the predicted value is
``h^-1`` of the expectation over the bins (or of the scalar), against the realised return (MAE,
RMSE, correlations). A binned head is also scored as trained (``nll``: the cross-entropy against
the fit's soft labels) and as a distribution: the hard-bin NLL (``hard_nll``), the CRPS, a
randomised PIT histogram, the mass in the two end bins, and the errors of its mean and mode.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vh.errors import VhError
from vh.heads.targets import register
from vh.heads.targets.base import (
    Pool,
    TargetKind,
    TargetSpec,
    binned_spec,
    refuse_where,
    soft_labels,
    value_labels,
)
from vh.transforms import muzero_h, muzero_h_inv


def check_return(reader, ret: np.ndarray) -> None:
    """Refuse a non-finite return: its binned label would be all zeros (a loss of 0)."""
    refuse_where(~np.isfinite(ret), ret, reader, "columns/return", "is not finite")


# Per-state figures of a binned head's predictive distribution (``out_<key>``): see
# :func:`distribution_rows`.
DIST_ROWS = ("crps_row", "pit", "hard_nll_row", "mass_low", "mass_high", "end_bin", "mean", "mode")
PIT_SEED = 0  # the randomised PIT's uniform draws: fixed, so a report is reproducible


def distribution_rows(spec: TargetSpec, logits: np.ndarray, ret: np.ndarray, batch: int) -> dict:
    """What eval keeps of a binned return head on the test states, ``(n,)`` each.

    The predictive distribution puts ``p_i`` on bin centre ``c_i`` (h units), i.e. on the
    return ``h^-1(c_i)`` (raw units: ``h`` is increasing, so the order is kept).

    Returns:
        ``value``: ``h^-1(sum_i p_i c_i)``, the MuZero point value (the headline MAE/RMSE);
        ``nll_row``: cross-entropy against the soft labels of ``h(ret)``, as the fit encodes
        and computes it (from the logits); ``hard_nll_row``: ``-log p_k`` of the bin ``k`` holding ``h(ret)`` (outside the
        support: the end bin); ``crps_row``: the exact CRPS of the discrete distribution on
        the atoms ``h^-1(c_i)`` against ``ret``, raw return units; ``pit``: the randomised PIT
        of ``k``; ``mass_low``, ``mass_high``: ``p`` of the first and last bins; ``end_bin``:
        -1 / +1 where ``k`` is the first / last bin, else 0; ``mean``: ``sum_i p_i h^-1(c_i)``
        (the predictive mean, raw units); ``mode``: ``h^-1`` of the most probable centre.
    """
    from scipy import special

    from vh.eval import distributions as D
    from vh.eval import metrics as M

    n, nb = ret.size, spec.n_out
    atoms = muzero_h_inv(spec.bin_centers)  # (C,) raw return units
    u = np.random.default_rng(PIT_SEED).random(n)
    out = {key: np.empty(n) for key in ("value", "nll_row", *DIST_ROWS)}
    out["end_bin"] = np.zeros(n, dtype=np.int8)
    for a in range(0, n, batch):  # (batch, C) at a time: C can be 601
        sl, r = slice(a, a + batch), ret[a : a + batch]
        p = special.softmax(logits[sl], axis=1)
        k = M.bin_of(muzero_h(r), spec.bin_edges)  # clipped to the end bins
        out["value"][sl] = muzero_h_inv(p @ spec.bin_centers)  # expectation in h units
        # as the training loss computes it: from the logits, unclamped (a clamp at 1e-12 would
        # understate the loss where soft labels put mass on bins the head all but rules out)
        soft = soft_labels(muzero_h(r), spec)
        out["nll_row"][sl] = -np.einsum("nc,nc->n", soft, special.log_softmax(logits[sl], axis=1))
        out["hard_nll_row"][sl] = M.categorical_nll(p=p, y=k)
        out["crps_row"][sl] = D.crps_discrete(atoms=atoms, p=p, y=r)
        out["pit"][sl] = D.pit_randomized(p=p, k=k, u=u[sl])
        out["mass_low"][sl], out["mass_high"][sl] = p[:, 0], p[:, -1]
        out["end_bin"][sl] = (k == nb - 1).astype(np.int8) - (k == 0)
        out["mean"][sl], out["mode"][sl] = p @ atoms, atoms[np.argmax(p, axis=1)]
    return out


class Return(TargetKind):
    """The discounted return in h() units, binned or scalar."""

    name = "return"
    pool = Pool("return", "return heads", ("rmse", "mae"), "rmse")
    loss_label = "return loss: CE against the soft labels (as trained)"

    def make_spec(self, cfg, *, monotone, train_values):
        k = len(cfg.thresholds)
        base = TargetSpec(self.name, tuple(cfg.thresholds), k, "bernoulli", monotone=monotone)
        if cfg.return_encoding == "scalar":
            return dataclasses.replace(base, n_out=1, encoding="scalar")
        sigma = cfg.return_sigma if cfg.return_encoding == "gaussian" else 0
        return binned_spec(
            base, cfg, cfg.return_bins, sigma, "fit.target.return_bins", train_values
        )

    def check_sources(self, reader):
        if reader.has_column("return"):
            check_return(reader, np.asarray(reader.column("return")))

    def add_values(self, reader, rows, out):
        """``ret`` (the raw discounted return) and ``value = h(ret)``."""
        if not reader.has_column("return"):
            raise VhError(
                "the return head needs the cache's `return` column: extract with "
                "--set extract.gamma=0.997",
                path=reader.path,
                field="return",
            )
        out["ret"] = np.asarray(reader.column("return"), np.float64)[rows]
        check_return(reader, out["ret"])
        out["value"] = muzero_h(out["ret"])

    def train_labels(self, spec, values):
        """f32[n]: h(return), encoded over the bins inside the step (or regressed)."""
        return value_labels(spec, values)

    def objective(self, spec, cfg, pos_rate):
        from vh.heads import losses

        scalar = spec.encoding == "scalar"
        losses.refuse_options(cfg, quartic=scalar)
        return losses.scalar_objective(cfg) if scalar else losses.categorical_objective(spec)

    def link(self, spec):
        import jax

        if spec.encoding == "scalar":
            return lambda z: z[..., 0]
        return jax.nn.softmax

    def eval_outputs(self, spec, logits, values, batch):
        """Predicted value and realised return in raw units; when binned, the per-state
        figures of the predictive distribution (:func:`distribution_rows`)."""
        ret = values["ret"]
        if not spec.binned:
            return {"value": muzero_h_inv(logits[:, 0]), "ret": ret}
        return {"ret": ret, **distribution_rows(spec, logits, ret, batch)}

    def check_outputs(self, pred, expect, path):
        n, out = pred.n, pred.out
        expect("out_value", out.get("value"), (n,))
        expect("out_ret", out.get("ret"), (n,))
        for key in ("nll_row", *DIST_ROWS):
            if key in out:
                expect(f"out_{key}", out[key], (n,))

    def score(self, pred, ctx):
        """MAE, RMSE, correlations; when distributional, the NLL against the soft labels (as
        trained) and the distribution's figures (:func:`_distribution`)."""
        from vh.eval import bootstrap as B
        from vh.eval import scoring as S

        value = np.asarray(pred.out["value"], dtype=np.float64)
        ret = np.asarray(pred.out["ret"], dtype=np.float64)
        err, idx = value - ret, ctx.index
        stats: dict[str, B.Stat] = {
            "mae": B.Mean(idx, np.abs(err)),
            "rmse": B.Rmse(idx, err),
            "spearman": B.Spearman(idx, value, ret),
            "pearson": B.Pearson(idx, value, ret),
        }
        per_row = {"mae": (np.abs(err), "mean"), "rmse": (err**2, "root_mean")}
        figures: dict = {"encoding": pred.meta.get("encoding", "")}
        plots = {"trajectories": _trajectories(ctx, value, ret)}
        distributional = "nll_row" in pred.out
        if distributional:
            stats["nll"] = B.Mean(idx, pred.out["nll_row"])
        if "crps_row" in pred.out:  # files of an older vh lack the distribution's figures
            dist_stats, figures["distribution"], plots["pit"] = _distribution(pred.out, ret, idx)
            stats |= dist_stats
            per_row["crps"] = (np.asarray(pred.out["crps_row"], dtype=np.float64), "mean")
        figures["slices"] = S.slice_tables(ctx, per_row)
        family = "return (distributional)" if distributional else "return (scalar)"
        primary = "nll" if distributional else "rmse"
        return S.finish(pred, ctx, stats, figures, plots, family, primary)

    def family_criteria(self, s):
        return [s.primary, "mae"] if s.primary == "nll" else ["rmse", "mae"]

    def export_objective(self, spec):
        if spec.encoding == "scalar":
            return {"type": "mse", "vocab_size": 1, "vocab_type": "muzero_return"}
        return {
            "type": "cross_entropy",
            "vocab_size": int(spec.n_out),
            "vocab_type": "muzero_return_bins",
            "support": [float(spec.lo), float(spec.hi)],
        }


def _distribution(out: dict, ret: np.ndarray, idx) -> tuple[dict, dict, tuple]:
    """A binned head as a distribution: bootstrapped figures, the rest, the PIT histogram.

    Bootstrapped (by run): ``crps`` (raw return units), ``hard_nll``, ``mass_low`` and
    ``mass_high`` (mean probability in the end bins: a support clipped too tight piles mass
    there), ``mae_mean``/``rmse_mean`` of the predictive mean and ``mae_mode``/``rmse_mode``
    of the mode (raw units). Point figures: the PIT histogram (10 bins) and its largest
    deviation from flat, the observed share of states in each end bin, a table of the three
    point predictions' errors.
    """
    from vh.eval import bootstrap as B
    from vh.eval import distributions as D

    f = {k: np.asarray(out[k], dtype=np.float64) for k in DIST_ROWS}
    stats: dict[str, B.Stat] = {
        "crps": B.Mean(idx, f["crps_row"]),
        "hard_nll": B.Mean(idx, f["hard_nll_row"]),
        "mass_low": B.Mean(idx, f["mass_low"]),
        "mass_high": B.Mean(idx, f["mass_high"]),
    }
    points = {
        "value": ("h^-1(E[h(return)]) (the headline value)", np.asarray(out["value"]) - ret),
        "mean": ("E[return] (predictive mean)", f["mean"] - ret),
        "mode": ("mode (most probable bin)", f["mode"] - ret),
    }
    for key in ("mean", "mode"):
        stats[f"mae_{key}"] = B.Mean(idx, np.abs(points[key][1]))
        stats[f"rmse_{key}"] = B.Rmse(idx, points[key][1])
    share, max_dev = D.pit_histogram(f["pit"], bins=10)
    figures = {
        "crps_units": "raw return units, atoms h^-1 of the bin centres",
        "pit_hist": share.tolist(),
        "pit_max_dev": max_dev,
        "end_bins": {
            "predicted_low": float(f["mass_low"].mean()),
            "observed_low": float(np.mean(f["end_bin"] < 0)),
            "predicted_high": float(f["mass_high"].mean()),
            "observed_high": float(np.mean(f["end_bin"] > 0)),
        },
        "points": [
            {
                "point": name,
                "mae": float(np.mean(np.abs(e))),
                "rmse": float(np.sqrt(np.mean(e**2))),
            }
            for name, e in points.values()
        ],
    }
    return stats, figures, (share, max_dev)


def _trajectories(ctx, value: np.ndarray, ret: np.ndarray, n_games: int = 4) -> list:
    """The longest few test games, step by step (rows are sorted by run, then step)."""
    counts = np.bincount(ctx.index.code)
    games = []
    for code in np.argsort(-counts, kind="stable")[:n_games]:
        rows = np.flatnonzero(ctx.index.code == code)
        games.append(
            (f"run {ctx.index.ids[code]}", ctx.rows["step_index"][rows], value[rows], ret[rows])
        )
    return games


register(Return())
