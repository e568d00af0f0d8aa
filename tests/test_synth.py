"""Players, `vh synth` datasets (layouts, metadata.db, sidecar, shards, atomicity) and the CLI."""

import dataclasses
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from vh.cli import main
from vh.config import SynthConfig
from vh.errors import VhError
from vh.extract import engine, players, synth
from vh.extract.board import pack, unpack
from vh.extract.formats import LEGACY, PACKED_42, PACKED_46, SELFPLAY, VALUES
from vh.extract.rewards import discounted_returns, replay_rewards

# --------------------------------------------------------------------------- players


def mid_game_boards(n: int, seed: int) -> np.ndarray:
    """Boards after 30 random moves: a mix of positions, all with a legal move."""
    rng = np.random.default_rng(seed)
    b = engine.new_games(n, rng)
    for _ in range(30):
        legal = engine.legal_mask(b)
        dirs = players.make_player("random").choose(b, legal, rng.random(n))[0]
        moved = engine.move(b, dirs)[0]
        b = np.where(legal > 0, engine.spawn(moved, rng), b)
    return b[engine.legal_mask(b) > 0]


@pytest.mark.parametrize("name, depth", [("random", 2), ("greedy", 2), ("expectimax", 2)])
def test_players_pick_legal_moves_deterministically(name, depth):
    boards = mid_game_boards(300 if name != "expectimax" else 40, seed=1)
    legal = engine.legal_mask(boards)
    u = np.random.default_rng(2).random(boards.size)
    player = players.make_player(name, depth)
    dirs, values = player.choose(boards, legal, u)
    assert np.all((legal >> dirs) & 1)
    again, values2 = player.choose(boards, legal, u)
    assert np.array_equal(dirs, again)
    if values is not None:
        assert np.array_equal(values, values2)
        assert np.array_equal(np.isfinite(values), (legal[:, None] >> np.arange(4) & 1) == 1)


def test_random_player_is_uniform_over_legal_moves():
    board = pack(np.array([[1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6, 0, 0, 7, 0]]))[0]  # not up
    legal = engine.legal_mask(board)
    n = 30_000
    u = np.random.default_rng(3).random(n)
    dirs, _ = players.make_player("random").choose(np.repeat(board, n), np.repeat(legal, n), u)
    counts = np.bincount(dirs, minlength=4)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] - n / 3) < 5 * np.sqrt(n * 2 / 9))
    logp = players.make_player("random").logp(players.legal_values(legal))
    assert np.allclose(np.exp(logp[0, 1:]), 1 / 3) and np.isneginf(logp[0, 0])


def test_unknown_player_lists_the_valid_names():
    with pytest.raises(VhError, match="expectimax, greedy, random") as e:
        players.make_player("minimax")
    assert e.value.field == "synth.player"


def loop_heuristic(line: list[int]) -> float:
    """nneonneo's 2048-ai row heuristic, written as the C loop (an independent oracle)."""
    total, empty, merges, prev, counter = 0.0, 0, 0, 0, 0
    for rank in line:
        total += rank**3.5
        if rank == 0:
            empty += 1
        else:
            if prev == rank:
                counter += 1
            elif counter > 0:
                merges += 1 + counter
                counter = 0
            prev = rank
    if counter > 0:
        merges += 1 + counter
    left = right = 0.0
    for i in range(1, 4):
        if line[i - 1] > line[i]:
            left += line[i - 1] ** 4 - line[i] ** 4
        else:
            right += line[i] ** 4 - line[i - 1] ** 4
    return 200000 + 270 * empty + 700 * merges - 47 * min(left, right) - 11 * total


def test_heuristic_matches_the_row_loop():
    rng = np.random.default_rng(4)
    exps = rng.integers(0, 12, size=(50, 16))
    exps[rng.random(exps.shape) < 0.3] = 0
    got = players.heuristic(pack(exps)[0])
    grid = exps.reshape(-1, 4, 4)
    want = [
        sum(loop_heuristic(list(g[r])) + loop_heuristic(list(g[:, r])) for r in range(4))
        for g in grid
    ]
    assert np.allclose(got, want, rtol=0, atol=1.0)  # a float32 table: ~0.1 of rounding


def brute_values(board: int, depth: int) -> list[float]:
    """Expectimax by explicit recursion over one board (the oracle of the vectorised search)."""
    values = []
    for d in range(4):
        new, reward = engine.move(np.array([board], np.uint64), np.array([d]))
        if new[0] == board:
            values.append(-np.inf)
        elif depth == 1:
            values.append(float(reward[0] + players.heuristic(new)[0]))
        else:
            cells = unpack(new)[0]
            empty = np.flatnonzero(cells == 0)
            expected = 0.0
            for i in empty:
                for tile, p in ((1, 0.9), (2, 0.1)):
                    c = cells.copy()
                    c[i] = tile
                    best = max(brute_values(int(pack(c[None])[0][0]), depth - 1))
                    expected += p / len(empty) * (0.0 if best == -np.inf else best)
            values.append(float(reward[0]) + expected)
    return values


def test_expectimax_values_match_brute_force():
    boards = mid_game_boards(60, seed=5)
    few_empty = boards[(unpack(boards) == 0).sum(axis=1) <= 5][:3]
    assert few_empty.size
    legal = engine.legal_mask(few_empty)
    _, values = players.make_player("expectimax", 2).choose(few_empty, legal, np.zeros(3))
    for b, v in zip(few_empty, values, strict=True):
        assert np.allclose(v, brute_values(int(b), 2), rtol=1e-9)
    _, greedy = players.make_player("greedy").choose(few_empty, legal, np.zeros(3))
    assert np.allclose(greedy, [brute_values(int(b), 1) for b in few_empty], rtol=1e-9)


# --------------------------------------------------------------------------- synth

TINY = SynthConfig(games=5, player="random", shard_rows=150, values=True, max_moves=0)


def load(out, name="steps"):
    files = sorted(out.glob(f"{name}-*.npy"))
    return [np.load(f) for f in files]


def runs_table(out):
    con = sqlite3.connect(out / "metadata.db")
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
        rows = con.execute("SELECT * FROM runs ORDER BY id").fetchall()
        session = dict(con.execute("SELECT meta_key, meta_value FROM session"))
    finally:
        con.close()
    return cols, np.array(rows, dtype=np.int64), session


def test_synth_packed_dataset_is_consistent(tmp_path):
    out = tmp_path / "ds"
    s = synth.synth(TINY, out, progress=False)
    shards = load(out)
    rows = np.concatenate(shards)
    assert rows.dtype == PACKED_46 and rows.dtype.itemsize == 46
    cols, runs, session = runs_table(out)
    assert cols == ["id", "seed", "steps", "max_score", "highest_tile"]
    assert runs[:, 0].tolist() == [1, 2, 3, 4, 5] and runs[:, 2].sum() == rows.size == s.rows
    assert session["player"] == "random" and session["layout"] == "packed"
    # runs contiguous, in step order, never straddling shards
    shard_of = [{i for i, sh in enumerate(shards) if rid in sh["run_id"]} for rid in runs[:, 0]]
    assert len(shards) >= 2 and all(len(s) == 1 for s in shard_of)
    for rid, seed, steps, score, highest in runs:
        run = rows[rows["run_id"] == rid]
        assert run["step_index"].tolist() == list(range(steps))
        assert np.all(run["seed"] == seed)
        exps = unpack(run["board"])
        reward = replay_rewards(exps, run["move_dir"])
        assert reward.sum() == score
        assert highest >= 2 ** run["max_rank"].max() and highest & (highest - 1) == 0
        assert np.array_equal(run["max_rank"], exps.max(axis=1))
        assert np.array_equal(run["ev_legal"], engine.legal_mask(run["board"]))
        assert np.all((run["ev_legal"] >> run["move_dir"]) & 1)
        assert np.array_equal(run["board_eval"], np.rint(players.heuristic(run["board"])))
        # the next state = the moved board plus exactly one new 2 or 4 in an empty cell
        moved = unpack(engine.move(run["board"], run["move_dir"])[0])[:-1]
        nxt = exps[1:]
        diff = moved != nxt
        assert np.all(diff.sum(axis=1) == 1)
        assert np.all(moved[diff] == 0) and set(np.unique(nxt[diff])) <= {1, 2}
    assert np.all(rows["tile_65536_mask"] == 0) and np.all(rows["valuation_type"] == 0)


def test_values_sidecar_matches_replay_and_returns(tmp_path):
    out = tmp_path / "ds"
    synth.synth(dataclasses.replace(TINY, gamma=0.9), out, progress=False)
    steps, values = load(out), load(out, "values")
    assert [len(s) for s in steps] == [len(v) for v in values]
    rows, vals = np.concatenate(steps), np.concatenate(values)
    assert vals.dtype == VALUES
    assert np.array_equal(vals["run_id"], rows["run_id"])
    assert np.array_equal(vals["step_index"], rows["step_index"])
    reward = replay_rewards(unpack(rows["board"]), rows["move_dir"])
    assert np.array_equal(vals["reward"], reward)
    assert np.allclose(vals["reward_scaled"], reward / synth.VALUE_SCALE)
    returns = discounted_returns(reward, rows["run_id"], 0.9)
    assert np.allclose(vals["return_raw"], returns, rtol=1e-6)
    assert np.allclose(vals["return_scaled"], returns / synth.VALUE_SCALE, rtol=1e-6)


def test_synth_is_deterministic_and_seeded(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synth.synth(TINY, a, progress=False)
    synth.synth(TINY, b, progress=False)
    synth.synth(dataclasses.replace(TINY, seed=1), c, progress=False)
    names = sorted(p.name for p in a.glob("*.npy"))
    assert names == sorted(p.name for p in b.glob("*.npy")) and len(names) >= 2
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes()
    assert (a / "steps-00000.npy").read_bytes() != (c / "steps-00000.npy").read_bytes()
    assert np.array_equal(runs_table(a)[1], runs_table(b)[1])


def test_a_game_replays_from_its_seed_alone(tmp_path):
    out = tmp_path / "ds"
    cfg = dataclasses.replace(TINY, player="greedy", max_moves=40, values=False)
    synth.synth(cfg, out, progress=False)
    rows = np.concatenate(load(out))
    run3 = rows[rows["run_id"] == 3]
    alone = synth.play_games(players.make_player("greedy"), run3["seed"][:1], max_moves=40)
    assert np.array_equal(alone.rows["board"], run3["board"])
    assert np.array_equal(alone.rows["move"], run3["move_dir"])


@pytest.mark.parametrize(
    "layout, board_eval, dtype",
    [("packed", False, PACKED_42), ("selfplay", True, SELFPLAY), ("legacy", True, LEGACY)],
)
def test_layouts(tmp_path, layout, board_eval, dtype):
    out = tmp_path / layout
    cfg = dataclasses.replace(
        TINY,
        layout=layout,
        board_eval=board_eval,
        player="expectimax",
        games=2,
        max_moves=12,
        metadata="legacy",
    )
    synth.synth(cfg, out, progress=False)
    rows = np.concatenate(load(out))
    assert rows.dtype == dtype and rows.size == 24
    assert {PACKED_42: 42, SELFPLAY: 45, LEGACY: 32}[dtype] == rows.dtype.itemsize
    cols, runs, _ = runs_table(out)
    assert cols == ["id", "seed", "num_moves", "final_score", "highest_tile"]
    step = rows["step_idx"] if layout == "selfplay" else rows["step_index"]
    assert step.tolist() == list(range(12)) * 2
    if layout == "selfplay":
        logp = rows["logp"].astype(np.float64)
        assert np.allclose(np.exp(logp).sum(axis=1), 1.0, atol=1e-5)
        chosen = logp[np.arange(logp.shape[0]), rows["move_dir"]]
        assert np.all(chosen == logp.max(axis=1))  # plays its policy's mode
    if layout == "legacy":
        legal = rows["ev_legal"][:, None] >> np.arange(4) & 1
        assert np.all((rows["ev_values"] != 0) == (legal == 1))


def test_legacy_layout_refuses_long_games():
    synth._check_legacy_steps(np.array([10, 65536]), np.array([1, 2]))  # 65536 rows fit
    with pytest.raises(VhError, match="run 2 has 65537 steps") as e:
        synth._check_legacy_steps(np.array([10, 65537]), np.array([1, 2]))
    assert e.value.field == "step_index"


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(1, 60), st.integers(1, 10)
)
def test_shard_packing_is_greedy_and_independent_of_waves(
    tmp_path_factory, lengths, rows_per, wave
):
    def write(folder, wave_size):
        folder.mkdir()
        w = synth._ShardWriter(folder, rows_per, ("steps",))
        ids = np.repeat(np.arange(len(lengths)), lengths)
        start = 0
        for i in range(0, len(lengths), wave_size):
            n = int(sum(lengths[i : i + wave_size]))
            w.add((ids[start : start + n],), np.array(lengths[i : i + wave_size]))
            start += n
        w.close()
        return [np.load(f) for f in sorted(folder.glob("steps-*.npy"))]

    base = tmp_path_factory.mktemp("shards")
    one, many = write(base / "one", len(lengths)), write(base / "many", wave)
    assert [s.tolist() for s in one] == [s.tolist() for s in many]
    assert np.array_equal(np.concatenate(one), np.repeat(np.arange(len(lengths)), lengths))
    for i, s in enumerate(one):
        assert len(s) <= rows_per or len(np.unique(s)) == 1  # only a lone long run overflows
        if i + 1 < len(one):  # greedy: the next shard's first run did not fit
            first = (
                len(one[i + 1])
                if len(np.unique(one[i + 1])) == 1
                else int(np.sum(one[i + 1] == one[i + 1][0]))
            )
            assert len(s) + first > rows_per
        runs_here = set(np.unique(s))
        assert all(runs_here.isdisjoint(np.unique(o)) for o in one if o is not s)


def test_existing_dir_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "ds"
    synth.synth(TINY, out, progress=False)
    with pytest.raises(VhError, match="--overwrite") as e:
        synth.synth(TINY, out, progress=False)
    assert e.value.code == 3
    synth.synth(dataclasses.replace(TINY, games=2), out, overwrite=True, progress=False)
    assert runs_table(out)[1].shape[0] == 2
    (out / "notes.txt").write_text("mine")
    with pytest.raises(VhError, match="notes.txt"):
        synth.synth(TINY, out, overwrite=True, progress=False)
    assert (out / "notes.txt").exists()


def test_a_failed_synth_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    stale = tmp_path / ".ds.tmp-999999999"  # from a killed run: no such process
    stale.mkdir()
    monkeypatch.setattr(synth, "_write_db", boom)
    with pytest.raises(KeyboardInterrupt):
        synth.synth(TINY, tmp_path / "ds", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bad_config_values_name_the_key(tmp_path):
    with pytest.raises(VhError) as e:
        synth.synth(dataclasses.replace(TINY, games=0), tmp_path / "x", progress=False)
    assert e.value.field == "synth.games"
    assert not (tmp_path / "x").exists()


def test_cli_synth(tmp_path):
    out = tmp_path / "ds"
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "synth",
            "--out",
            str(out),
            "--games",
            "3",
            "--player",
            "random",
            "--layout",
            "selfplay",
            "--set",
            "synth.max_moves=20",
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1].startswith("wrote 60 rows of 3 runs")
    assert np.concatenate(load(out)).dtype == SELFPLAY
    bad = runner.invoke(main, ["synth", "--out", str(tmp_path / "x"), "--player", "minimax"])
    assert bad.exit_code == 2 and "synth.player" in bad.output and "Traceback" not in bad.output
    again = runner.invoke(main, ["synth", "--out", str(out), "--games", "3"])
    assert again.exit_code == 3 and "--overwrite" in again.output


# --------------------------------------------------------------------------- SplitMix64


def _old_splitmix64(x: np.ndarray) -> np.ndarray:
    """The formula synth and the splits each carried before vh.transforms, written out."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def test_shared_splitmix64_gives_the_old_bits():
    from vh.heads.splits import run_uniform
    from vh.transforms import splitmix64

    rng = np.random.default_rng(0)
    x = np.r_[rng.integers(0, 2**63, 1000, dtype=np.uint64) * np.uint64(2), 0, 2**64 - 1]
    x = x.astype(np.uint64)
    np.testing.assert_array_equal(splitmix64(x), _old_splitmix64(x))
    # the first output of the stream seeded 0 is the reference value of the algorithm
    assert int(splitmix64(np.array([0], np.uint64))[0]) == 0xE220A8397B1DCDAF
    # the splits' signed ids are reinterpreted, not cast: -1 is state 2**64 - 1
    ids = np.array([-5, -1, 0, 1, 123456789], np.int64)
    salt = _old_splitmix64(np.array([7], np.int64).view(np.uint64))[0]
    h = _old_splitmix64(ids.view(np.uint64) ^ salt)
    want = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    np.testing.assert_array_equal(run_uniform(ids, 7), want)
    # synth's game streams: state seed + k * golden, as before
    seeds = np.array([0, 1, 2**32 - 1], np.uint32)
    step = np.uint64(3 * 0x9E3779B97F4A7C15 % (1 << 64))
    np.testing.assert_array_equal(
        synth._draw(seeds, 3), _old_splitmix64(seeds.astype(np.uint64) + step)
    )
