"""A toy target kind, registered from this one file (tests/test_target_registry.py).

``toy_remaining``: the share of the game still to play, ``1 - step_fraction`` of the state, a
scalar regressed with the squared error. It has its own pool (it is compared with no other
kind), its own scoring (MAE, RMSE), its family criteria and its export objective; nothing
outside this file names it.
"""

from __future__ import annotations

import numpy as np

from vh.heads.targets import register
from vh.heads.targets.base import Pool, TargetKind, TargetSpec, value_labels


class Remaining(TargetKind):
    """The share of the game still to play, regressed."""

    name = "toy_remaining"
    aliases = ("toy",)
    pool = Pool("toy", "toy heads (the share of the game still to play)", ("rmse",), "rmse")

    def make_spec(self, cfg, *, monotone, train_values):
        return TargetSpec(self.name, tuple(cfg.thresholds), 1, "scalar")

    def add_values(self, reader, rows, out):
        out["value"] = 1.0 - np.asarray(reader.column("step_fraction"), np.float64)[rows]

    def train_labels(self, spec, values):
        return value_labels(spec, values)

    def objective(self, spec, cfg, pos_rate):
        from vh.heads import losses

        losses.refuse_options(cfg)
        return losses.scalar_objective(cfg)

    def link(self, spec):
        return lambda z: z[..., 0]

    def eval_outputs(self, spec, logits, values, batch):
        return {"value": logits[:, 0], "truth": values["value"]}

    def check_outputs(self, pred, expect, path):
        expect("out_value", pred.out.get("value"), (pred.n,))
        expect("out_truth", pred.out.get("truth"), (pred.n,))

    def score(self, pred, ctx):
        from vh.eval import bootstrap as B
        from vh.eval import scoring as S

        err = np.asarray(pred.out["value"]) - np.asarray(pred.out["truth"])
        stats = {"mae": B.Mean(ctx.index, np.abs(err)), "rmse": B.Rmse(ctx.index, err)}
        slices = S.slice_tables(ctx, {"mae": (np.abs(err), "mean"), "rmse": (err**2, "root_mean")})
        return S.finish(pred, ctx, stats, {"slices": slices}, {}, "toy (remaining)", "rmse")

    def family_criteria(self, s):
        return ["rmse", "mae"]

    def export_objective(self, spec):
        return {"type": "mse", "vocab_size": 1, "vocab_type": "toy_remaining"}


KIND = register(Remaining())
