"""Targets: the MuZero transform, two-hot and Gaussian encodings, the outside rule, specs,
and labels joined from the runs table (train and eval labels of each kind)."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vh.config import TargetConfig
from vh.errors import VhError
from vh.heads.targets import (
    TargetSpec,
    count_outside,
    get,
    make_spec,
    muzero_h,
    muzero_h_inv,
    soft_labels,
    target_values,
    train_targets,
)

BINNED = TargetSpec("return", (1024,), 21, "twohot", lo=-2.0, hi=8.0)
GAUSS = TargetSpec("logscore", (1024,), 41, "gaussian", lo=0.0, hi=12.0, sigma=0.75)


def test_muzero_h_hand_values_and_inverse():
    # h(3) = (sqrt(4) - 1) + 0.003 = 1.003; h is odd; h(0) = 0
    assert muzero_h(3.0) == pytest.approx(1.003)
    assert muzero_h(-3.0) == pytest.approx(-1.003)
    x = np.array([-1e6, -50.0, -1.0, 0.0, 0.5, 7.0, 1e4, 3e6])
    np.testing.assert_allclose(muzero_h_inv(muzero_h(x)), x, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(muzero_h(jnp.asarray(x, jnp.float32)), muzero_h(x), rtol=1e-5)


@settings(max_examples=50, deadline=None)
@given(st.floats(-2.0, 8.0))
def test_twohot_expectation_is_the_value(v):
    p = soft_labels(np.array([v]), BINNED)
    assert p.sum() == pytest.approx(1.0)
    assert (p > 0).sum() <= 2 and np.all(p >= 0)
    assert float((p @ BINNED.bin_centers)[0]) == pytest.approx(v, abs=1e-9)


def test_gaussian_labels_sum_to_one_and_centre_on_the_value():
    v = np.linspace(3.0, 9.0, 13)  # away from the edges, the truncation is negligible
    p = soft_labels(v, GAUSS)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    # histogram discretisation leaves a tiny periodic bias, ~1e-5 of a bin at sigma = 0.75 bin
    np.testing.assert_allclose(p @ GAUSS.bin_centers, v, atol=1e-4 * GAUSS.bin_width)
    # spread: the variance of the bin masses ~ sigma^2 + w^2/12 (histogram of a Gaussian)
    var = p @ GAUSS.bin_centers**2 - v**2
    w = GAUSS.bin_width
    np.testing.assert_allclose(var, (0.75 * w) ** 2 + w**2 / 12, rtol=1e-2)
    # the jax version (used inside the train step) agrees
    pj = soft_labels(jnp.asarray(v, jnp.float32), GAUSS)
    np.testing.assert_allclose(pj, p, atol=1e-5)  # float32 CDF differences


def test_outside_rule_clips_to_the_end_bins_and_counts():
    v = np.array([-5.0, -2.0, 8.0, 100.0, 3.0])
    p = soft_labels(v, BINNED)
    assert p[0, 0] == 1.0 and p[1, 0] == 1.0 and p[2, -1] == 1.0 and p[3, -1] == 1.0
    assert count_outside(v, BINNED) == 2
    g = soft_labels(np.array([50.0]), GAUSS)  # a Gaussian centred on the last centre
    assert g.argmax() == GAUSS.n_out - 1 and g.sum() == pytest.approx(1.0)


def test_make_spec_kinds_and_ranges():
    cfg = TargetConfig(thresholds=(512, 1024, 2048))
    assert make_spec(cfg).n_out == 3
    tiles = make_spec(TargetConfig(kind="tiles", thresholds=(512, 1024)))
    assert (tiles.n_out, tiles.encoding) == (3, "class")
    s = make_spec(TargetConfig(kind="logscore", n_bins=8), train_values=np.array([2.0, 5.0, 9.0]))
    assert (s.lo, s.hi, s.n_out, s.encoding) == (2.0, 9.0, 8, "twohot")
    assert len(s.bin_edges) == 9 and s.bin_edges[0] == pytest.approx(2.0 - s.bin_width / 2)
    s = make_spec(TargetConfig(kind="return", return_encoding="gaussian", bin_range=(-1.0, 4.0)))
    assert (s.lo, s.hi, s.sigma, s.n_out) == (-1.0, 4.0, 0.75, 601)
    assert make_spec(TargetConfig(kind="return", return_encoding="scalar")).n_out == 1
    assert TargetSpec.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    "cfg, kw, field",
    [
        (TargetConfig(thresholds=(1024, 512)), {}, "fit.target.thresholds"),
        (TargetConfig(thresholds=()), {}, "fit.target.thresholds"),
        (TargetConfig(kind="tiles"), {"monotone": True}, "fit.head.monotone"),
        (TargetConfig(kind="logscore"), {}, "fit.target.bin_range"),
        (TargetConfig(kind="logscore", bin_range=(3.0, 1.0)), {}, "fit.target.bin_range"),
        (TargetConfig(kind="logscore", n_bins=1, bin_range=(0.0, 1.0)), {}, "fit.target.n_bins"),
    ],
)
def test_make_spec_refuses(cfg, kw, field):
    with pytest.raises(VhError) as e:
        make_spec(cfg, **kw)
    assert e.value.field == field


class _Reader:
    """A cache reader's label-related surface, from arrays (runs sorted by id)."""

    path = "mem"

    def __init__(self, run_id, ret=None):
        self.cols = {"run_id": run_id}
        if ret is not None:
            self.cols["return"] = ret
        self.runs = {
            "id": np.array([3, 7, 9]),
            "highest_tile": np.array([512, 2048, 8192]),
            "final_score": np.array([100, 5000, 70000]),
        }

    def column(self, name):
        return self.cols[name]

    def has_column(self, name):
        return name in self.cols


def test_labels_join_the_runs_table():
    r = _Reader(np.array([7, 7, 3, 9, 9]), ret=np.array([0.0, 10.0, 3.0, 1e4, 2.0], np.float32))
    rows = np.array([4, 0, 2])  # runs 9, 7, 3: highest tiles 8192, 2048, 512
    T = (1024, 2048, 4096)
    spec = make_spec(TargetConfig(thresholds=T))
    v = target_values("ordinal", r, rows)
    np.testing.assert_array_equal(v["highest_tile"], [8192, 2048, 512])
    np.testing.assert_array_equal(v["final_score"], [70000, 5000, 100])
    y = train_targets(spec, v)
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, [[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    # eval scores the head against the same labels (one implementation)
    np.testing.assert_array_equal(get("ordinal").eval_labels(v, np.array(T), {}), y)

    tiles = make_spec(TargetConfig(kind="tiles", thresholds=T))
    y = train_targets(tiles, target_values("tiles", r, rows))
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, [3, 2, 0])
    np.testing.assert_array_equal(get("tiles").eval_labels(v, np.array(T), {}), [3, 2, 0])

    ls = make_spec(TargetConfig(kind="logscore", n_bins=16, bin_range=(0.0, 12.0)))
    v = target_values("logscore", r, rows)
    np.testing.assert_allclose(v["value"], np.log1p([70000, 5000, 100]))
    y = train_targets(ls, v)
    assert y.dtype == np.float32
    np.testing.assert_allclose(soft_labels(y, ls) @ ls.bin_centers, v["value"], rtol=1e-6)
    # eval: the hard bin holding log1p(score); bins are 0.8 wide around 0, 0.8, …, 12
    bins = get("logscore").eval_labels(v, np.array(T), {"bin_edges": ls.bin_edges})
    np.testing.assert_array_equal(bins, np.round(np.log1p([70000, 5000, 100]) / 0.8))

    rt = make_spec(TargetConfig(kind="return", return_bins=51, bin_range=(0.0, 120.0)))
    v = target_values("return", r, rows)
    np.testing.assert_allclose(v["ret"], [2.0, 0.0, 3.0])
    np.testing.assert_allclose(v["value"], muzero_h(np.array([2.0, 0.0, 3.0])))
    y = soft_labels(train_targets(rt, v), rt)
    np.testing.assert_allclose(y @ rt.bin_centers, v["value"], rtol=1e-6, atol=1e-6)


def test_labels_refuse_unknown_runs_and_a_missing_return_column():
    with pytest.raises(VhError, match="run 5 of the states is not in the runs table"):
        target_values("ordinal", _Reader(np.array([3, 5])), np.array([0, 1]))
    with pytest.raises(VhError) as e:
        target_values("return", _Reader(np.array([3])), np.array([0]))
    assert e.value.field == "return"
