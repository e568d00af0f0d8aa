"""Losses: golden values, independent references (sklearn, optax, scipy), masks, jit, and
finite gradients at extreme logits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import expit, log_softmax
from sklearn.metrics import log_loss

from vh.config import LossConfig
from vh.errors import VhError
from vh.heads.losses import (
    balance_weights,
    cross_entropy,
    make_objective,
    masked_mean,
    ordinal_bce,
    squared_error,
)
from vh.heads.targets import TargetSpec

RNG = np.random.default_rng(0)
Z = RNG.normal(size=(50, 4)) * 3
Y = (RNG.random((50, 4)) < 0.4).astype(np.uint8)
MASK = (RNG.random(50) < 0.7).astype(np.float32)


def test_ordinal_bce_is_mean_of_sklearn_log_losses():
    ours = float(jnp.mean(ordinal_bce(jnp.asarray(Z), jnp.asarray(Y))))
    ref = np.mean([log_loss(Y[:, k], expit(Z[:, k]), labels=[0, 1]) for k in range(4)])
    assert ours == pytest.approx(ref, rel=1e-5)


def test_ordinal_bce_hand_value_with_weights_and_focal():
    # one example, one threshold, y = 1, z = 0.3, w+ = 2, gamma = 2:
    # p = sigmoid(0.3); loss = -2 (1 - p)^2 log p
    p = 1 / (1 + np.exp(-0.3))
    want = -2 * (1 - p) ** 2 * np.log(p)
    got = ordinal_bce(
        jnp.array([[0.3]]),
        jnp.array([[1]]),
        pos_weight=jnp.array([2.0]),
        neg_weight=jnp.array([5.0]),
        focal_gamma=2.0,
    )
    assert float(got[0]) == pytest.approx(want, rel=1e-5)


def test_focal_matches_optax():
    ours = ordinal_bce(jnp.asarray(Z), jnp.asarray(Y), focal_gamma=2.0)
    ref = jnp.mean(
        optax.sigmoid_focal_loss(jnp.asarray(Z), jnp.asarray(Y, jnp.float32), gamma=2.0), axis=-1
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)


def test_balance_weights_hand_values():
    # p = 0.5 -> 1, 1; p = 0.01 -> w+ = 50 capped at 10, w- = 1/1.98; p = 0.99 mirrored
    wp, wn = balance_weights(np.array([0.5, 0.01, 0.99]), 10.0)
    np.testing.assert_allclose(wp, [1.0, 10.0, 1 / 1.98], rtol=1e-6)
    np.testing.assert_allclose(wn, [1.0, 1 / 1.98, 10.0], rtol=1e-6)
    wp, wn = balance_weights(np.array([0.0, 1.0]), 10.0)  # degenerate rates stay capped
    np.testing.assert_allclose(wp, [10.0, 0.5])
    np.testing.assert_allclose(wn, [0.5, 10.0])


def test_cross_entropy_hard_matches_sklearn_and_soft_matches_scipy():
    c = RNG.integers(0, 4, 50)
    ours = float(jnp.mean(cross_entropy(jnp.asarray(Z), jnp.asarray(c))))
    assert ours == pytest.approx(log_loss(c, np.exp(log_softmax(Z, 1)), labels=range(4)), rel=1e-5)
    soft = RNG.dirichlet(np.ones(4), 50)
    want = -(soft * log_softmax(Z, 1)).sum(1)
    np.testing.assert_allclose(
        cross_entropy(jnp.asarray(Z), jnp.asarray(soft, jnp.float32)), want, rtol=1e-5
    )
    np.testing.assert_allclose(want, optax.softmax_cross_entropy(Z, soft), rtol=1e-6)


def test_squared_error_with_quartic_hand_value():
    # err = [1, -2]: err^2 + 0.5 err^4 = [1.5, 12]
    got = squared_error(jnp.array([[2.0], [0.0]]), jnp.array([1.0, 2.0]), quartic=0.5)
    np.testing.assert_allclose(got, [1.5, 12.0])


LOSSES = {
    "bce": lambda z, y, m=None: ordinal_bce(z, y, mask=m),
    "focal": lambda z, y, m=None: ordinal_bce(z, y, focal_gamma=1.5, mask=m),
    "ce": lambda z, y, m=None: cross_entropy(z, y.sum(1), mask=m),
    "soft": lambda z, y, m=None: cross_entropy(z, jax.nn.softmax(y * 1.0), mask=m),
    "mse": lambda z, y, m=None: squared_error(z[:, 0], y[:, 0] * 1.0, quartic=0.1, mask=m),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_equals_subset_and_jit_equals_eager(name):
    f = LOSSES[name]
    z, y, m = jnp.asarray(Z, jnp.float32), jnp.asarray(Y), jnp.asarray(MASK)
    keep = MASK > 0
    masked = masked_mean(f(z, y, m), m)
    subset = jnp.mean(f(z[keep], y[keep]))
    assert float(masked) == pytest.approx(float(subset), rel=1e-6)
    np.testing.assert_allclose(jax.jit(f)(z, y, m), f(z, y, m), rtol=1e-6)
    assert float(jnp.max(jnp.abs(f(z, y, m)[~keep]))) == 0.0  # padded rows contribute nothing


@pytest.mark.parametrize("name", ["bce", "focal", "ce", "soft"])
@pytest.mark.parametrize("scale", [1e4, 1e30])
def test_gradients_finite_at_extreme_logits(name, scale):
    f = LOSSES[name]
    z = jnp.asarray(np.sign(Z) * scale, jnp.float32)
    loss, g = jax.value_and_grad(lambda z: jnp.mean(f(z, jnp.asarray(Y))))(z)
    assert np.isfinite(float(loss)) and bool(jnp.all(jnp.isfinite(g)))


def test_objective_refuses_options_of_other_targets():
    tiles = TargetSpec("tiles", (2, 4), 3, "class")
    with pytest.raises(VhError) as e:
        make_objective(tiles, LossConfig(balance=True))
    assert e.value.field == "fit.loss.balance"
    with pytest.raises(VhError) as e:
        make_objective(tiles, LossConfig(quartic=0.1))
    assert e.value.field == "fit.loss.quartic"


def test_balanced_objective_uses_train_rates():
    spec = TargetSpec("ordinal", (2, 4), 2, "bernoulli")
    obj = make_objective(spec, LossConfig(balance=True), pos_rate=np.array([0.5, 0.1]))
    z, y = jnp.zeros((1, 2)), jnp.array([[1, 1]])
    # log 2 per threshold, weighted by w+ = [1, 5]: mean = 3 log 2; the NLL stays unweighted
    assert float(obj.loss(z, y)[0]) == pytest.approx(3 * np.log(2), rel=1e-6)
    assert float(obj.nll(z, y)[0]) == pytest.approx(np.log(2), rel=1e-6)
