"""The ``ordinal`` kind: K milestones, ``y_k = [highest_tile of the state's run >= T_k]``.

A head outputs K logits, ``q_k = sigmoid(logit_k) = P(highest_tile >= T_k)`` (ordered by
construction when ``fit.head.monotone``). It is trained with the BCE averaged over thresholds
(optionally class-balanced or focal) and scored with the threshold heads: its ``q`` gives bucket
probabilities ``p_i = q_i - q_{i+1}``, so it meets the tiles heads on one scale.
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
    reached,
)


class Ordinal(TargetKind):
    """K sigmoid milestones."""

    name = "ordinal"
    pool = THRESHOLD_POOL
    thresholded = True
    monotone_ok = True
    temperature = "binary"
    loss_label = "ordinal loss: mean BCE per threshold"

    def make_spec(self, cfg, *, monotone, train_values):
        k = len(cfg.thresholds)
        return TargetSpec(self.name, tuple(cfg.thresholds), k, "bernoulli", monotone=monotone)

    def check_train(self, spec, values):
        check_reached(spec, values["highest_tile"])

    def train_labels(self, spec, values):
        """u1[n, K]: the milestones reached."""
        return reached(values["highest_tile"], spec.thresholds).astype(np.uint8)

    def positive_rate(self, y):
        return y.mean(0)

    def objective(self, spec, cfg, pos_rate):
        from vh.heads import losses

        losses.refuse_options(cfg, balance=True)
        return losses.ordinal_objective(cfg, pos_rate)

    def link(self, spec):
        import jax

        return jax.nn.sigmoid

    def eval_labels(self, values, thresholds, out):
        """u1 ``(n, K)``."""
        return reached(values["highest_tile"], thresholds).astype(np.uint8)

    def check_outputs(self, pred, expect, path):
        k = pred.thresholds.shape[0]
        class_outputs(pred, expect, k, val_y=(k,))

    @staticmethod
    def probs(logits: np.ndarray, Y: np.ndarray, yb: np.ndarray):
        """``q (n, K)``, bucket probabilities ``p (n, K+1)`` and the BCE per row."""
        from scipy import special

        from vh.eval import metrics as M

        q = special.expit(logits)
        return q, M.buckets_from_q(q), M.bce(q=q, y=Y).mean(axis=1)

    def score(self, pred, ctx):
        from vh.eval.scoring import score_thresholds

        return score_thresholds(pred, ctx, self.probs, rank_inconsistency=True)

    def family_criteria(self, s):
        return ["nll", "auroc_top", "ece_high"]

    def export_objective(self, spec):
        return {
            "type": "cross_entropy",
            "vocab_size": int(spec.n_out),
            "vocab_type": "ordinal_milestones",
            "thresholds": [int(t) for t in spec.thresholds],
        }


register(Ordinal())
