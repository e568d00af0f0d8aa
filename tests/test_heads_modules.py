"""Head modules: monotone ordering, the probe's affine map, parameter names and init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vh.config import HeadConfig
from vh.errors import VhError
from vh.heads.modules import flatten_params, linear_map, make_head, unflatten_params
from vh.heads.targets import TargetSpec

ORD = TargetSpec("ordinal", (2, 4, 8, 16, 32), 5, "bernoulli", monotone=True)
X = jnp.asarray(np.random.default_rng(0).normal(size=(64, 12)) * 5, jnp.float16)


@pytest.mark.parametrize("arch", ["probe", "mlp"])
def test_monotone_head_orders_q_for_random_params(arch):
    model = make_head(arch, ORD, HeadConfig(hidden=16))
    params = model.init(jax.random.PRNGKey(0), X)["params"]
    for seed in range(5):  # any parameters at all, not just the init
        leaves, tree = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
        rand = [jax.random.normal(k, p.shape) * 3 for k, p in zip(keys, leaves, strict=True)]
        q = jax.nn.sigmoid(model.apply({"params": tree.unflatten(rand)}, X))
        assert bool(jnp.all(jnp.diff(q, axis=1) <= 0))


@pytest.mark.parametrize("monotone", [False, True])
def test_probe_linear_map_gives_its_logits(monotone):
    spec = TargetSpec("ordinal", (2, 4, 8), 3, "bernoulli", monotone=monotone)
    model = make_head("probe", spec, HeadConfig(small_init=False))
    params = model.init(jax.random.PRNGKey(1), X)["params"]
    flat = flatten_params(params)
    w, b = linear_map(flat)
    assert w.shape == (3, 12) and b.shape == (3,)
    np.testing.assert_allclose(
        np.asarray(X, np.float64) @ w.T + b,
        model.apply({"params": unflatten_params(flat)}, X),
        rtol=1e-5,
        atol=1e-5,
    )


def test_mlp_names_init_and_no_affine_map():
    spec = TargetSpec("tiles", (2, 4), 3, "class")
    model = make_head("mlp", spec, HeadConfig(hidden=256))
    flat = flatten_params(model.init(jax.random.PRNGKey(2), X)["params"])
    assert set(flat) == {"hidden.kernel", "hidden.bias", "out.kernel", "out.bias"}
    assert flat["hidden.kernel"].shape == (12, 256) and flat["out.kernel"].shape == (256, 3)
    assert abs(flat["out.kernel"].std() - 0.01) < 0.002  # small init N(0, 0.01^2)
    with pytest.raises(VhError):
        linear_map(flat)
    with pytest.raises(VhError) as e:
        make_head("transformer", spec, HeadConfig())
    assert e.value.field == "fit.head.arch"


def test_dropout_only_in_training():
    spec = TargetSpec("tiles", (2, 4), 3, "class")
    model = make_head("mlp", spec, HeadConfig(hidden=64, dropout=0.5))
    v = model.init(jax.random.PRNGKey(3), X)
    a = model.apply(v, X, train=False)
    assert np.array_equal(a, model.apply(v, X, train=False))
    b = model.apply(v, X, train=True, rngs={"dropout": jax.random.PRNGKey(4)})
    assert not np.allclose(a, b)


def test_hash_dropout_rate_scale_and_fresh_masks():
    from vh.heads.modules import HashDropout

    x = jnp.ones((512, 256))
    d = HashDropout(0.1)
    y1 = d.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    y2 = d.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    kept = np.asarray(y1) > 0
    # 131072 Bernoulli(0.9) draws: sd of the kept share is 0.0008
    assert abs(kept.mean() - 0.9) < 0.004
    np.testing.assert_allclose(np.asarray(y1)[kept], 1 / 0.9, rtol=1e-6)  # inverted scaling
    assert abs(kept.mean(0).std() - np.sqrt(0.09 / 512)) < 0.004  # columns alike, no stripes
    agree = (kept == (np.asarray(y2) > 0)).mean()
    assert abs(agree - (0.81 + 0.01)) < 0.01  # another key: an independent mask


def _mlp_numpy(x, flat, gelu):
    """LayerNorm (no scale/bias, eps 1e-6, biased variance) -> Linear -> GELU -> Linear."""
    x = np.asarray(x, np.float64)
    n = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-6)
    h = gelu(n @ flat["hidden.kernel"] + flat["hidden.bias"])
    return h @ flat["out.kernel"] + flat["out.bias"]


def _gelu_tanh(z):
    return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))


def _gelu_erf(z):
    from scipy import special

    return 0.5 * z * (1 + special.erf(z / np.sqrt(2)))


def test_mlp_forward_is_the_numpy_formula_with_tanh_gelu():
    spec = TargetSpec("tiles", (2, 4), 3, "class")
    model = make_head("mlp", spec, HeadConfig(hidden=32, dropout=0.5, small_init=False))
    flat = {
        k: np.asarray(v, np.float64)
        for k, v in flatten_params(model.init(jax.random.PRNGKey(5), X)["params"]).items()
    }
    got = np.asarray(model.apply({"params": unflatten_params(flat)}, X, train=False))
    err_tanh = np.abs(got - _mlp_numpy(X, flat, _gelu_tanh)).max()
    err_erf = np.abs(got - _mlp_numpy(X, flat, _gelu_erf)).max()
    # float32 rounding only; the tanh approximation (flax's default), not the exact erf GELU
    assert err_tanh < 2e-5 and err_erf > 10 * err_tanh, (err_tanh, err_erf)
