"""The 2048 engine and the board codec, against a plain-Python oracle of one move."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from vh.errors import VhError
from vh.extract import engine
from vh.extract.board import MAX_EXP, pack, unpack
from vh.extract.formats import DOWN, LEFT, RIGHT, UP

# --------------------------------------------------------------------------- oracle


def ref_move(cells: list[int], d: int) -> tuple[list[int], int]:
    """One move on a 4x4 list of exponents, written the obvious way (the independent oracle).

    Each line is read from the side the tiles move to; equal neighbours (empties skipped)
    merge once, left to right, scoring the new tile's value.
    """
    grid = [cells[4 * r : 4 * r + 4] for r in range(4)]
    out = [[0] * 4 for _ in range(4)]
    reward = 0
    for k in range(4):
        if d in (UP, DOWN):
            coords = [(r, k) for r in range(4)]
        else:
            coords = [(k, c) for c in range(4)]
        if d in (DOWN, RIGHT):
            coords = coords[::-1]
        tiles = [grid[r][c] for r, c in coords if grid[r][c]]
        merged = []
        i = 0
        while i < len(tiles):
            if i + 1 < len(tiles) and tiles[i] == tiles[i + 1]:
                merged.append(tiles[i] + 1)
                reward += 2 ** (tiles[i] + 1)
                i += 2
            else:
                merged.append(tiles[i])
                i += 1
        merged += [0] * (4 - len(merged))
        for (r, c), v in zip(coords, merged, strict=True):
            out[r][c] = v
    return [v for row in out for v in row], reward


def packed(cells) -> np.ndarray:
    return pack(np.array([cells]))[0][0]


# many empties and small tiles, so that merges are common
cell = st.one_of(st.integers(0, 3), st.integers(0, 15))
board15 = st.lists(cell, min_size=16, max_size=16)
direction = st.integers(0, 3)


def random_boards(n: int, seed: int, high: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    exps = rng.integers(0, high, size=(n, 16))
    exps[rng.random(exps.shape) < 0.35] = 0
    return exps


# --------------------------------------------------------------------------- codec


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, MAX_EXP), min_size=16, max_size=16))
def test_codec_round_trip_with_65536(cells):
    boards, mask = pack(np.array([cells]))
    assert np.array_equal(unpack(boards, mask)[0], cells)
    # without the mask a 65536 reads as nibble 15
    assert np.array_equal(unpack(boards)[0], np.minimum(cells, 15))
    assert int(mask[0]) == sum(1 << i for i, v in enumerate(cells) if v == MAX_EXP)


def test_codec_cell_order_by_hand():
    # cell 0 (top-left) sits in the top nibble, cell 15 in the bottom one
    cells = [1] + [0] * 14 + [3]
    board, mask = pack(np.array([cells]))
    assert int(board[0]) == (1 << 60) | 3 and int(mask[0]) == 0


# --------------------------------------------------------------------------- moves


@pytest.mark.parametrize(
    "cells, d, expected, reward",
    [
        ([1, 1, 1, 1] + [0] * 12, LEFT, [2, 2, 0, 0] + [0] * 12, 8),
        (
            [1, 1, 2, 0] + [0] * 12,
            LEFT,
            [2, 2, 0, 0] + [0] * 12,
            4,
        ),  # the new 4 does not merge again
        ([2, 1, 1, 0] + [0] * 12, LEFT, [2, 2, 0, 0] + [0] * 12, 4),
        ([1, 1, 1, 0] + [0] * 12, RIGHT, [0, 0, 1, 2] + [0] * 12, 4),  # the pair nearest the wall
        ([1, 0, 0, 0, 1] + [0] * 11, UP, [2] + [0] * 15, 4),
        ([1, 0, 0, 0, 1] + [0] * 11, DOWN, [0] * 12 + [2, 0, 0, 0], 4),
        ([3, 0, 3, 0] + [0] * 12, LEFT, [4, 0, 0, 0] + [0] * 12, 16),  # merges across an empty
    ],
)
def test_moves_by_hand(cells, d, expected, reward):
    new, r = engine.move(np.array([packed(cells)]), np.array([d]))
    assert list(unpack(new)[0]) == expected and int(r[0]) == reward


@settings(max_examples=300, deadline=None)
@given(board15, direction)
def test_move_matches_reference(cells, d):
    want, want_reward = ref_move(cells, d)
    board = np.array([packed(cells)])
    if max(want) > 15:  # two 32768 merged: a packed board cannot hold 65536
        with pytest.raises(VhError, match="65536"):
            engine.move(board, np.array([d]))
    else:
        new, reward = engine.move(board, np.array([d]))
        assert list(unpack(new)[0]) == want and int(reward[0]) == want_reward
    new_e, reward_e = engine.move_exps(np.array([cells]), np.array([d]))
    assert list(new_e[0]) == want and int(reward_e[0]) == want_reward


def test_many_boards_match_reference_and_move_all():
    exps = random_boards(500, seed=1)
    boards = pack(exps)[0]
    all_boards, all_rewards = engine.move_all(boards)
    for d in range(4):
        new, reward = engine.move(boards, np.full(500, d))
        assert np.array_equal(new, all_boards[:, d]) and np.array_equal(reward, all_rewards[:, d])
        for i in range(0, 500, 5):
            cells, r = ref_move(list(exps[i]), d)
            assert list(unpack(new[i : i + 1])[0]) == cells and reward[i] == r
    # mixed directions in one call
    dirs = np.arange(500) % 4
    new, reward = engine.move(boards, dirs)
    assert np.array_equal(new, all_boards[np.arange(500), dirs])


def test_tile_sum_is_conserved_and_reward_counts_merges():
    exps = random_boards(2000, seed=2)
    boards = pack(exps)[0]
    values = np.where(exps > 0, 1 << exps, 0).sum(axis=1)
    new, reward = engine.move_all(boards)
    for d in range(4):
        e = unpack(new[:, d])
        assert np.array_equal(np.where(e > 0, 1 << e.astype(np.int64), 0).sum(axis=1), values)
        # each merge removes one tile and scores the new tile: tiles lost = merges
        assert np.all((reward[:, d] > 0) == ((e > 0).sum(axis=1) < (exps > 0).sum(axis=1)))


def test_directions_agree_with_transposition_and_reflection():
    exps = random_boards(1000, seed=3)
    grid = exps.reshape(-1, 4, 4)

    def run(g, d):
        b = pack(g.reshape(-1, 16))[0]
        new, r = engine.move(b, np.full(b.shape[0], d))
        return unpack(new).reshape(-1, 4, 4), r

    left, r_left = run(grid, LEFT)
    mirrored, r_mirrored = run(grid[:, :, ::-1], RIGHT)  # right on the mirror = mirrored left
    assert np.array_equal(mirrored[:, :, ::-1], left) and np.array_equal(r_mirrored, r_left)
    up, r_up = run(grid, UP)
    t_left, r_t_left = run(grid.transpose(0, 2, 1), LEFT)  # up = transpose, left, transpose
    assert np.array_equal(t_left.transpose(0, 2, 1), up) and np.array_equal(r_t_left, r_up)
    down, r_down = run(grid, DOWN)
    t_right, r_t_right = run(grid.transpose(0, 2, 1), RIGHT)
    assert np.array_equal(t_right.transpose(0, 2, 1), down) and np.array_equal(r_t_right, r_down)


@settings(max_examples=200, deadline=None)
@given(board15)
def test_transpose_matches_numpy(cells):
    b = np.array([packed(cells)])
    want = np.array(cells).reshape(4, 4).T.ravel()
    assert np.array_equal(unpack(engine.transpose(b))[0], want)


def test_legality_and_illegal_moves_leave_the_board():
    exps = random_boards(3000, seed=4, high=4)
    exps[:500] = np.where(exps[:500] == 0, 1 + np.arange(16) % 3, exps[:500])  # some full boards
    boards = pack(exps)[0]
    new, reward = engine.move_all(boards)
    legal = engine.legal_mask(boards)
    changed = new != boards[:, None]
    assert np.array_equal(changed, (legal[:, None] >> np.arange(4) & 1) == 1)
    assert np.all(reward[~changed] == 0)
    assert np.array_equal(engine.is_over(boards), legal == 0)


def test_dead_board_is_over():
    checker = [1 + (r + c) % 2 for r in range(4) for c in range(4)]  # 2/4 checkerboard
    boards = pack(np.array([checker, [0] + checker[1:]]))[0]
    assert list(engine.is_over(boards)) == [True, False]
    assert int(engine.legal_mask(boards)[0]) == 0


def test_65536_tile():
    row = [15, 15, 0, 0] + [0] * 12
    board = np.array([packed(row)])
    assert int(engine.legal_mask(board)[0]) & (1 << LEFT)  # legal, exactly reported
    with pytest.raises(VhError, match="65536"):
        engine.move(board, np.array([LEFT]))
    new, reward = engine.move_exps(np.array([row]), np.array([LEFT]))
    assert list(new[0][:4]) == [16, 0, 0, 0] and int(reward[0]) == 65536
    with pytest.raises(VhError, match="131072"):
        engine.move_exps(np.array([[16, 16] + [0] * 14]), np.array([LEFT]))


def test_bad_input_raises_vherror():
    with pytest.raises(VhError) as e:
        engine.move(np.zeros(2, np.uint64), np.array([0, 4]))
    assert e.value.field == "move_dir"
    with pytest.raises(VhError):
        engine.move(np.zeros(2, np.uint64), np.array([0]))
    with pytest.raises(VhError):
        engine.move_exps(np.zeros((1, 15), np.uint8), np.array([0]))
    with pytest.raises(VhError):
        engine.move_exps(np.full((1, 16), 17), np.array([0]))


# --------------------------------------------------------------------------- spawning


def test_spawn_statistics():
    # 6 empty cells; 120k spawns: one new tile in an empty cell, 4 with p=0.1, cells uniform
    cells = [1, 0, 2, 3, 0, 1, 2, 0, 3, 1, 0, 2, 0, 3, 0, 1]
    empty = [i for i, v in enumerate(cells) if v == 0]
    n = 120_000
    boards = np.full(n, packed(cells), dtype=np.uint64)
    after = unpack(engine.spawn(boards, np.random.default_rng(0)))
    diff = after != np.array(cells)
    assert np.all(diff.sum(axis=1) == 1)
    where = np.argmax(diff, axis=1)
    assert set(np.unique(where)) == set(empty)
    tile = after[np.arange(n), where]
    assert set(np.unique(tile)) == {1, 2}
    fours = int((tile == 2).sum())
    sigma = np.sqrt(n * 0.1 * 0.9)  # binomial
    assert abs(fours - 0.1 * n) < 5 * sigma
    counts = np.bincount(where, minlength=16)[empty]
    assert stats.chisquare(counts).pvalue > 1e-4


def test_spawn_on_full_board_is_a_no_op_and_new_games_have_two_tiles():
    full = np.array([packed([2 + i % 3 for i in range(16)])])  # cell 15 holds 2: a stray OR shows
    assert np.array_equal(engine.spawn(full, np.random.default_rng(0)), full)
    fresh = unpack(engine.new_games(1000, np.random.default_rng(1)))
    assert np.all((fresh > 0).sum(axis=1) == 2) and set(np.unique(fresh)) <= {0, 1, 2}


def test_place_tiles_uses_the_uniforms():
    board = np.array([packed([0, 1] * 8)] * 3)  # empty cells 0, 2, 4, ..., 14
    new = unpack(engine.place_tiles(board, np.array([0.0, 0.99, 0.5]), np.array([0.5, 0.5, 0.05])))
    changed = [np.flatnonzero(new[i] != unpack(board[:1])[0]) for i in range(3)]
    # the empty cells in a fixed order: u=0 takes the first, u=0.99 the last
    positions = sorted({int(c[0]) for c in changed})
    assert len(positions) == 3 and all(len(c) == 1 for c in changed)
    assert new[2][changed[2][0]] == 2 and new[0][changed[0][0]] == 1
