"""Losses: pure, keyword-only, per-example, with explicit masks.

Every loss returns one value per example ``[n]``; a ``mask`` (1 = real row, 0 = padding)
zeroes the padded rows, and :func:`masked_mean` averages over the real ones, so a padded last
batch gives exactly the loss of its real rows. Logs are taken in their stable forms
(``log_sigmoid``, ``log_softmax``) so extreme logits give finite losses and gradients.

:func:`make_objective` picks the training loss and the model-selection NLL for a target: its
kind (``vh.heads.targets``) chooses among the objectives here and refuses options it does not
use (:func:`refuse_options`).

Axis legend: n rows, K thresholds, C classes or bins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from vh.config import LossConfig
from vh.errors import VhError
from vh.heads.targets import TargetSpec, get, soft_labels


def _apply_mask(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    return values if mask is None else jnp.where(mask > 0, values, 0.0)


def masked_mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean of per-example ``values`` [n] over the rows where ``mask`` is nonzero."""
    if mask is None:
        return jnp.mean(values)
    m = (mask > 0).astype(values.dtype)
    return jnp.sum(values * m) / jnp.maximum(jnp.sum(m), 1.0)


def ordinal_bce(
    logits: jax.Array,
    labels: jax.Array,
    *,
    pos_weight: jax.Array | None = None,
    neg_weight: jax.Array | None = None,
    focal_gamma: float = 0.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Binary cross-entropy averaged over thresholds.

    Args:
        logits: [n, K] logits of P(y_k = 1).
        labels: [n, K] targets in {0, 1} (any dtype).
        pos_weight, neg_weight: optional [K] weights of the positive and negative terms
            (class balancing).
        focal_gamma: focal modulation ``(1 - p_t)^gamma`` (0 = plain BCE).
        mask: optional [n].

    Returns:
        [n] per-example loss.
    """
    y = labels.astype(jnp.float32)
    z = logits.astype(jnp.float32)
    # one softplus gives both logs: -log p = softplus(z) - z, -log(1 - p) = softplus(z); stable
    # for any z, and half the transcendental work of two log_sigmoid calls (a grid computes
    # M·K of these per row)
    sp = jax.nn.softplus(z)
    wp = 1.0 if pos_weight is None else pos_weight
    wn = 1.0 if neg_weight is None else neg_weight
    per = wp * y * (sp - z) + wn * (1.0 - y) * sp  # (n, K)
    if focal_gamma:
        # log(1 - p_t) = (1 - y) z - softplus(z): the modulation stays smooth at extreme logits
        per = per * jnp.exp(focal_gamma * ((1.0 - y) * z - sp))
    return _apply_mask(jnp.mean(per, axis=-1), mask)


def cross_entropy(
    logits: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None
) -> jax.Array:
    """Softmax cross-entropy with hard (int [n]) or soft (float [n, C]) labels.

    Args:
        logits: [n, C].
        labels: class indices [n] or probabilities [n, C].
        mask: optional [n].

    Returns:
        [n] per-example loss.
    """
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        per = -jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    else:
        per = -jnp.sum(labels * log_p, axis=-1)
    return _apply_mask(per, mask)


def squared_error(
    pred: jax.Array, target: jax.Array, *, quartic: float = 0.0, mask: jax.Array | None = None
) -> jax.Array:
    """``err^2 + quartic * err^4`` per example (its masked mean is MSE + w·mean(err⁴)).

    Args:
        pred: [n] or [n, 1] predictions.
        target: [n].
        quartic: weight of the quartic term.
        mask: optional [n].

    Returns:
        [n] per-example loss.
    """
    err = jnp.reshape(pred, target.shape).astype(jnp.float32) - target.astype(jnp.float32)
    sq = err * err
    return _apply_mask(sq + quartic * sq * sq, mask)


def balance_weights(pos_rate: np.ndarray, max_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Class-balancing weights ``w+ = 1/(2p)``, ``w- = 1/(2(1-p))``, each capped at max_weight.

    Args:
        pos_rate: [K] positive rate of each threshold on the train split.
        max_weight: cap (a rare class gets at most this weight).

    Returns:
        (w_pos [K], w_neg [K]) float32.
    """
    p = np.asarray(pos_rate, np.float64)
    with np.errstate(divide="ignore"):
        wp = np.minimum(1.0 / (2.0 * p), max_weight)
        wn = np.minimum(1.0 / (2.0 * (1.0 - p)), max_weight)
    return wp.astype(np.float32), wn.astype(np.float32)


# --------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Objective:
    """The two per-example functions of (logits [n, out], labels, mask) a fit needs.

    ``loss`` is what is minimised (with balancing, focal or quartic terms); ``nll`` is the
    plain negative log-likelihood used for validation and early stopping (for the scalar
    return head, the squared error in transformed units). When the training loss is the NLL,
    both are the same function object and the train step evaluates it once.
    """

    loss: Callable[..., jax.Array]
    nll: Callable[..., jax.Array]


def refuse_options(cfg: LossConfig, *, balance: bool = False, quartic: bool = False) -> None:
    """Refuse loss options the target does not use (rather than ignore them).

    Args:
        cfg: the loss options.
        balance: class balancing and the focal term apply (ordinal targets).
        quartic: the quartic term applies (the scalar return head).
    """
    if (cfg.balance or cfg.focal_gamma) and not balance:
        raise VhError(
            "class balancing and the focal term apply to ordinal targets only",
            field="fit.loss.balance" if cfg.balance else "fit.loss.focal_gamma",
        )
    if cfg.quartic and not quartic:
        raise VhError(
            "the quartic term applies to the scalar return head only", field="fit.loss.quartic"
        )


def ordinal_objective(cfg: LossConfig, pos_rate: np.ndarray | None) -> Objective:
    """BCE over thresholds; class-balanced (weights from the train rates) or focal if asked."""
    wp = wn = None
    if cfg.balance:
        if pos_rate is None:
            raise VhError(
                "class balancing needs the train positive rates", field="fit.loss.balance"
            )
        wp, wn = (jnp.asarray(w) for w in balance_weights(pos_rate, cfg.max_weight))

    def loss(z, y, mask=None):
        return ordinal_bce(
            z, y, pos_weight=wp, neg_weight=wn, focal_gamma=cfg.focal_gamma, mask=mask
        )

    def nll(z, y, mask=None):
        return ordinal_bce(z, y, mask=mask)

    return Objective(loss if cfg.balance or cfg.focal_gamma else nll, nll)


def categorical_objective(spec: TargetSpec) -> Objective:
    """Softmax cross-entropy: class labels, or values encoded over a binned spec's bins."""

    def nll(z, y, mask=None):
        labels = soft_labels(y, spec) if spec.binned else y  # binned labels arrive as values
        return cross_entropy(z, labels, mask=mask)

    return Objective(nll, nll)


def scalar_objective(cfg: LossConfig) -> Objective:
    """Squared error (plus the quartic term when asked); the NLL is the plain squared error."""

    def loss(z, y, mask=None):
        return squared_error(z, y, quartic=cfg.quartic, mask=mask)

    def nll(z, y, mask=None):
        return squared_error(z, y, mask=mask)

    return Objective(loss if cfg.quartic else nll, nll)


def make_objective(
    spec: TargetSpec, cfg: LossConfig, pos_rate: np.ndarray | None = None
) -> Objective:
    """Training loss and validation NLL for a target (its kind picks them, see
    :meth:`vh.heads.targets.base.TargetKind.objective`).

    Args:
        spec: the target.
        cfg: loss options; balancing and focal apply to ordinal targets, quartic to the
            scalar return head (a mismatch is refused rather than ignored).
        pos_rate: [K] train positive rates (ordinal with balancing).

    Returns:
        The :class:`Objective`.
    """
    return get(spec.kind).objective(spec, cfg, pos_rate)
