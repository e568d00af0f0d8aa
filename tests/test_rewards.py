"""Rewards, returns and value transforms, against plain loops and hand-computed values."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine import ref_move

from vh import transforms
from vh.errors import VhError
from vh.extract import rewards


def loop_returns(r, ids, gamma):
    """G_t = r_t + gamma G_{t+1} inside a run, one row at a time from the end."""
    out = [0.0] * len(r)
    for i in range(len(r) - 1, -1, -1):
        nxt = out[i + 1] if i + 1 < len(r) and ids[i + 1] == ids[i] else 0.0
        out[i] = r[i] + gamma * nxt
    return np.array(out)


# --------------------------------------------------------------------------- replay


def test_replay_rewards_matches_reference_including_65536():
    rng = np.random.default_rng(0)
    exps = rng.integers(0, 17, size=(400, 16))
    exps[rng.random(exps.shape) < 0.4] = 0
    exps[:, 0] = 16  # a 65536 in every board; pairs of 16 are possible elsewhere
    exps[exps[:, 1] == 16, 1] = 15
    moves = rng.integers(0, 4, 400)
    ok = [max(ref_move(list(e), m)[0]) <= 16 for e, m in zip(exps, moves, strict=True)]
    exps, moves = exps[ok], moves[ok]  # drop the 131072 merges
    want = [ref_move(list(e), m)[1] for e, m in zip(exps, moves, strict=True)]
    assert np.array_equal(rewards.replay_rewards(exps.astype(np.uint8), moves), want)


def test_replay_rewards_small_chunks(monkeypatch):
    monkeypatch.setattr(rewards, "_REPLAY_CHUNK", 7)
    rng = np.random.default_rng(1)
    exps = rng.integers(0, 5, size=(50, 16))
    moves = rng.integers(0, 4, 50)
    want = [ref_move(list(e), m)[1] for e, m in zip(exps, moves, strict=True)]
    assert np.array_equal(rewards.replay_rewards(exps, moves), want)


def test_replay_rewards_bad_input():
    with pytest.raises(VhError, match="131072"):
        rewards.replay_rewards(np.array([[16, 16] + [0] * 14]), np.array([2]))
    with pytest.raises(VhError) as e:
        rewards.replay_rewards(np.zeros((3, 16)), np.zeros(2))
    assert e.value.field == "move_dir"
    with pytest.raises(VhError):
        rewards.replay_rewards(np.zeros((3, 16)), np.array([0, 1, 9]))


# --------------------------------------------------------------------------- returns


def test_discounted_returns_by_hand():
    # run 1: [1, 2, 3] with gamma 0.5 -> [1 + 0.5 * 3.5, 2 + 0.5 * 3, 3]; run 2: [4] -> [4]
    got = rewards.discounted_returns(np.array([1, 2, 3, 4]), np.array([1, 1, 1, 2]), 0.5)
    assert np.allclose(got, [2.75, 3.5, 3.0, 4.0])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 300), min_size=1, max_size=8),
    st.sampled_from([0.0, 0.5, 0.9, 0.997, 1.0]),
    st.integers(0, 2**31),
)
def test_discounted_returns_matches_loop(lengths, gamma, seed):
    rng = np.random.default_rng(seed)
    ids = np.repeat(rng.permutation(len(lengths)), lengths)  # ids need not be sorted
    r = rng.integers(0, 512, ids.size).astype(np.float64)
    got = rewards.discounted_returns(r, ids, gamma)
    assert np.allclose(got, loop_returns(r, ids, gamma), rtol=1e-12, atol=1e-9)


def test_discounted_returns_long_runs_cross_many_blocks():
    # 8-row blocks, runs of thousands of rows: three levels of recursion
    rng = np.random.default_rng(3)
    ids = np.repeat([5, 3, 9], [4099, 1, 2500])
    r = rng.integers(0, 2048, ids.size).astype(np.float64)
    for gamma in (0.99, 1.0):
        assert np.allclose(
            rewards.discounted_returns(r, ids, gamma), loop_returns(r, ids, gamma), rtol=1e-11
        )


def test_discounted_returns_edges():
    assert rewards.discounted_returns(np.zeros(0), np.zeros(0), 0.9).shape == (0,)
    assert rewards.discounted_returns(np.array([7.0]), np.array([1]), 0.9).tolist() == [7.0]
    with pytest.raises(VhError):
        rewards.discounted_returns(np.zeros(3), np.zeros(2), 0.9)
    with pytest.raises(VhError):
        rewards.discounted_returns(np.zeros(3), np.zeros(3), 1.5)


@pytest.mark.slow
def test_discounted_returns_50m_rows_in_seconds():
    rng = np.random.default_rng(4)
    lengths = rng.integers(50, 5000, 20_000)
    ids = np.repeat(np.arange(lengths.size, dtype=np.uint32), lengths)[:50_000_000]
    r = rng.integers(0, 64, ids.size).astype(np.float32)
    t0 = time.perf_counter()
    got = rewards.discounted_returns(r, ids, 0.997)
    assert time.perf_counter() - t0 < 20.0
    last = np.flatnonzero(np.r_[ids[1:] != ids[:-1], True])
    assert np.array_equal(got[last], r[last])


# --------------------------------------------------------------------------- transforms
# the MuZero transform lives in vh.transforms (shared by extract and heads); its numpy path


def test_muzero_h_by_hand():
    # h(3) = sqrt(4) - 1 + 0.003 = 1.003, odd, h(0) = 0
    assert np.allclose(transforms.muzero_h(np.array([3.0, -3.0, 0.0])), [1.003, -1.003, 0.0])


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e7, 1e7), st.sampled_from([1e-3, 0.0, 0.1]))
def test_muzero_inverse_round_trip(x, eps):
    y = transforms.muzero_h(np.array([x]), eps)
    back = transforms.muzero_h_inv(y, eps)
    assert np.allclose(back, x, rtol=1e-9, atol=1e-9)


def test_muzero_is_increasing():
    x = np.linspace(-1e5, 1e5, 10001)
    assert np.all(np.diff(transforms.muzero_h(x)) > 0)


def test_step_fraction():
    got = rewards.step_fraction(np.array([0, 1, 3, 0]), np.array([4, 4, 4, 1]))
    assert got.tolist() == [0.0, 0.25, 0.75, 0.0]
    with pytest.raises(VhError):
        rewards.step_fraction(np.array([4]), np.array([4]))


def test_muzero_h_is_gone_from_rewards():
    # one implementation: vh.transforms (heads and the return column use the same one)
    assert not hasattr(rewards, "muzero_h") and not hasattr(rewards, "muzero_h_inv")
