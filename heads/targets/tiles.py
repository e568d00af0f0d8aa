"""The ``tiles`` kind (``vh fit --head categorical``): the number of thresholds reached.

The label is a class in ``0..K`` (the highest-tile bucket); a head outputs K + 1 logits under a
softmax, trained with the cross-entropy. Scored with the threshold heads: its bucket
probabilities give ``q_k = P(highest_tile >= T_k)`` as tail sums.
"""

from __future__ import annotations

import numpy as np

from vh.heads.targets import register
from vh.heads.targets.base import (
    THRESHOLD_POOL,
    TargetKind,
    TargetSpec,
    check_reached,
    class_outputs,
    cross_entropy_objective,
    tile_bucket,
)


class Tiles(TargetKind):
    """K + 1 highest-tile buckets under one softmax."""

    name = "tiles"
    aliases = ("categorical",)
    pool = THRESHOLD_POOL
    thresholded = True
    temperature = "categorical"
    loss_label = "tiles loss: CE over buckets"

    def make_spec(self, cfg, *, monotone, train_values):
        n_out = len(cfg.thresholds) + 1  # K thresholds cut K + 1 buckets
        return TargetSpec(self.name, tuple(cfg.thresholds), n_out, "class", monotone=monotone)

    def check_train(self, spec, values):
        check_reached(spec, values["highest_tile"])

    def train_labels(self, spec, values):
        """i32[n]: the bucket."""
        return tile_bucket(values["highest_tile"], spec.thresholds).astype(np.int32)

    def objective(self, spec, cfg, pos_rate):
        from vh.heads import losses

        losses.refuse_options(cfg)
        return losses.categorical_objective(spec)

    def link(self, spec):
        import jax

        return jax.nn.softmax

    def eval_labels(self, values, thresholds, out):
        """int64 ``(n,)``: the bucket."""
        return tile_bucket(values["highest_tile"], thresholds)

    def check_outputs(self, pred, expect, path):
        class_outputs(pred, expect, pred.thresholds.shape[0] + 1)

    @staticmethod
    def probs(logits: np.ndarray, Y: np.ndarray, yb: np.ndarray):
        """``q (n, K)`` as tail sums, bucket probabilities ``p (n, K+1)``, the NLL per row."""
        from scipy import special

        from vh.eval import metrics as M

        p = special.softmax(logits, axis=1)
        return M.q_from_buckets(p), p, M.categorical_nll(p=p, y=yb)

    def score(self, pred, ctx):
        from vh.eval.scoring import score_thresholds

        return score_thresholds(pred, ctx, self.probs, rank_inconsistency=False)

    def family_criteria(self, s):
        return ["nll", "within1"]

    def export_objective(self, spec):
        return cross_entropy_objective(spec, "tile_bucket")


register(Tiles())
