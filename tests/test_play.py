"""`vh play`: the search against a direct enumeration, seeded games, a planted value function
against random play, the torch head against the JAX head, Wilson intervals, refusals.

The planted value function is the engine's own heuristic (:func:`vh.extract.players.heuristic`)
wrapped as a head: it needs no trunk, so games of it are fast and long enough to tell players
apart. Trunk-backed cases use the session's tiny run dir (conftest) with few, short games.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, invoke, snapshot

from vh.extract import engine
from vh.extract.board import pack
from vh.extract.play import Head, PlayConfig, play_match
from vh.extract.play_search import Search, move_values, terminal_function, wilson
from vh.extract.players import heuristic, make_player
from vh.heads.targets import TargetSpec

ROOT = Path(__file__).resolve().parents[1]
PLANTED_SPEC = TargetSpec("ordinal", (256, 512, 1024), 3, "bernoulli")


def planted_head(mode: str = "expectation") -> Head:
    return Head("planted", PLANTED_SPEC, heuristic, Search(mode, batch=4096), "score")


# --------------------------------------------------------------------------- search


def _boards() -> np.ndarray:
    """Hand-built boards: open, nearly full, one with merges everywhere, one with one move."""
    exps = [
        [1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6, 0, 5, 6, 7],
        [1, 1, 2, 2, 3, 3, 0, 0, 4, 0, 4, 0, 5, 5, 5, 5],
        [1, 2, 1, 2, 2, 1, 2, 1, 1, 2, 1, 2, 2, 1, 2, 0],
        [11, 10, 9, 8, 1, 2, 3, 7, 0, 0, 1, 6, 0, 0, 0, 5],
    ]
    return pack(np.array(exps))[0]


def _value(boards: np.ndarray) -> np.ndarray:
    """A made-up value with no structure the search could exploit: a hash of the board."""
    from vh.transforms import splitmix64

    return (splitmix64(np.asarray(boards, np.uint64)) >> np.uint64(40)).astype(np.float64)


def _direct(board: int, value, reward_weight: float, discount: float, spawn: bool,
            depth: int = 1, dead_value=None) -> list:  # fmt: skip
    """Move values by plain loops, every direction. At depth 1 the afterstate's value
    (``spawn`` False) or every empty cell with tile 2 (.9) or 4 (.1); deeper, every spawn child
    valued by its best move one level down, or, with no legal move, by ``dead_value`` (a
    function of the board) or else ``value``."""
    out = []
    for d in range(4):
        after, reward = engine.move(np.array([board], np.uint64), np.array([d]))
        after, reward = int(after[0]), int(reward[0])
        if after == board:
            out.append(-math.inf)
            continue
        cells = [c for c in range(16) if (after >> (60 - 4 * c)) & 15 == 0]
        if depth == 1 and not spawn:
            leaf = float(value(np.array([after], np.uint64))[0])
        else:
            leaf = 0.0
            for c in cells:
                for tile, p in {1: 0.9, 2: 0.1}.items():
                    child = after | (tile << (60 - 4 * c))
                    if depth == 1:
                        v = float(value(np.array([child], np.uint64))[0])
                    else:
                        v = max(_direct(child, value, reward_weight, discount, spawn, depth - 1,
                                        dead_value))  # fmt: skip
                        if v == -math.inf:
                            v = float((dead_value or value)(np.array([child], np.uint64))[0])
                    leaf += p / len(cells) * v
        out.append(reward_weight * reward + discount * leaf)
    return out


@pytest.mark.parametrize("mode", ["expectation", "afterstate"])
@pytest.mark.parametrize("weights", [(0.0, 1.0), (1.0, 0.97)])
def test_move_values_equal_a_direct_enumeration(mode, weights):
    boards = _boards()
    got = move_values(_value, boards, Search(mode, *weights, batch=7))  # odd batch: many calls
    want = [_direct(int(b), _value, *weights, spawn=mode == "expectation") for b in boards]
    np.testing.assert_allclose(got, np.array(want), rtol=1e-12)
    # the checkerboard's one hole (bottom right) is filled from above or from the left only
    assert np.isinf(got[3]).tolist() == [True, False, True, False]


def _reached(t: int):
    """Whether a board holds a tile >= t, by looking at every cell."""
    return lambda boards: np.array(
        [float(max(1 << ((int(b) >> (60 - 4 * c)) & 15) for c in range(16)) >= t) for b in boards]
    )


@pytest.mark.parametrize("mode", ["expectation", "afterstate"])
@pytest.mark.parametrize(
    "value,dead",
    [("score", None), ("return", lambda b: np.zeros(len(b))), ("p:16", _reached(16))],
)
def test_depth_two_equals_a_direct_enumeration(mode, value, dead):
    boards = _boards()[1:]  # the open board's 13 empty cells make the loops slow
    # one hole: some of its spawn children have no legal move (the game-over branch)
    hole = pack(np.array([[1, 2, 1, 2, 2, 1, 2, 1, 1, 2, 1, 2, 3, 4, 3, 0]]))[0]
    boards = np.concatenate([boards, hole])
    weights = (1.0, 0.97)
    search = Search(mode, *weights, batch=11, depth=2, terminal=terminal_function(value))
    got = move_values(_value, boards, search)
    want = [
        _direct(int(b), _value, *weights, mode == "expectation", depth=2, dead_value=dead)
        for b in boards
    ]
    np.testing.assert_allclose(got, np.array(want), rtol=1e-12)
    # depth 2 differs from depth 1 (the search looked further)
    assert not np.allclose(got, move_values(_value, boards, Search(mode, *weights)))


# --------------------------------------------------------------------------- games


def test_same_seed_same_games_and_a_new_seed_new_ones():
    cfg = PlayConfig(games=12, seed=5)
    base = [make_player("random"), make_player("greedy")]
    a = play_match([planted_head("afterstate")], base, cfg, log=None)
    b = play_match([planted_head("afterstate")], base, cfg, log=None)
    c = play_match([planted_head("afterstate")], base, PlayConfig(games=12, seed=6), log=None)
    for x, y, z in zip(a["players"], b["players"], c["players"], strict=True):
        assert x["scores"] == y["scores"] and x["lengths"] == y["lengths"]
        assert x["scores"] != z["scores"]


def test_planted_value_plays_better_than_random_on_the_same_seeds():
    from vh.extract.synth import game_seeds, play_games

    games = 48
    rec = play_match(
        [planted_head("expectation")], [make_player("random")], PlayConfig(games), log=None
    )
    planted, rnd = rec["players"]
    # the random baseline played exactly synth's random games on the same seeds
    ref = play_games(make_player("random"), game_seeds(0, np.arange(1, games + 1)))
    assert rnd["scores"] == [int(s) for s in ref.scores]
    # paired by seed: the heuristic-guided player wins nearly every game, by a wide margin
    p, r = np.array(planted["scores"]), np.array(rnd["scores"])
    assert p.mean() > 2.5 * r.mean(), (p.mean(), r.mean())  # measured: 4,087 vs 1,110
    assert (p > r).mean() > 0.9
    assert planted["reach"]["512"]["rate"] > rnd["reach"]["512"]["rate"]


def test_depth_two_plays_better_than_depth_one_on_the_same_seeds():
    """The planted heuristic searched two moves ahead (afterstate leaves) against one move
    ahead, 24 seeded games each: measured 17,030 against 3,417 mean score."""
    scores = {}
    for depth in (1, 2):
        head = Head("planted", PLANTED_SPEC, heuristic,
                    Search("afterstate", batch=4096, depth=depth), "score")  # fmt: skip
        rec = play_match([head], [], PlayConfig(24, depth=depth), log=None)
        assert rec["config"]["depth"] == depth
        scores[depth] = np.array(rec["players"][0]["scores"])
    assert scores[2].mean() > 2 * scores[1].mean(), (scores[2].mean(), scores[1].mean())
    assert (scores[2] > scores[1]).mean() > 0.8  # paired by seed


# --------------------------------------------------------------------------- figures


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (57, 200), (1, 1), (500, 1000)])
def test_wilson_interval_is_the_score_test_inversion(k, n):
    # the interval's ends are the p where (k/n - p)^2 = z^2 p (1 - p) / n: the quadratic
    # (1 + z^2/n) p^2 - (2 k/n + z^2/n) p + (k/n)^2 = 0, solved here directly
    z, ph = 1.959963984540054, k / n
    a, b, c = 1 + z * z / n, -(2 * ph + z * z / n), ph * ph
    root = math.sqrt(b * b - 4 * a * c)
    lo, hi = wilson(k, n)
    assert lo == pytest.approx((-b - root) / (2 * a), abs=1e-12)
    assert hi == pytest.approx((-b + root) / (2 * a), abs=1e-12)
    assert lo <= ph <= hi


# --------------------------------------------------------------------------- heads


def _jax_vs_torch(tiny, arch: str, params: dict, monotone: bool = False) -> None:
    """The torch module play builds from a run head gives the JAX head's logits."""
    import copy

    import torch

    from vh.export import head_tensors
    from vh.extract.play import head_module, read_run
    from vh.heads.api import RunHead

    rp = read_run(tiny["run"])
    config = copy.deepcopy(rp.config)
    config["fit"]["head"].update(arch=arch, hidden=16, monotone=monotone)
    spec = TargetSpec("ordinal", (128, 256), 2, "bernoulli", monotone=monotone)
    rh = RunHead(rp.run_dir, rp.member, spec, arch, params, config)
    emb = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    tensors, block = head_tensors(rh)
    with torch.inference_mode():
        got = head_module(tensors, block, 32)(torch.from_numpy(emb)).numpy()
    np.testing.assert_allclose(got, rh.logits(emb), rtol=2e-5, atol=2e-5)


def test_torch_head_equals_the_jax_head(tiny):
    rng = np.random.default_rng(0)

    def f(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    _jax_vs_torch(tiny, "probe", {"out.kernel": f(32, 2), "out.bias": f(2)})
    _jax_vs_torch(
        tiny, "probe", {"score.kernel": f(32, 1), "cut_b": f(), "cut_inc": f(2)}, monotone=True
    )
    mlp = {"hidden.kernel": f(32, 16), "hidden.bias": f(16), "out.kernel": f(16, 2)}
    _jax_vs_torch(tiny, "mlp", {**mlp, "out.bias": f(2)})


def test_run_head_plays_the_same_games_from_the_cli_without_jax(tiny, tmp_path):
    args = ["--run", tiny["run"], "--init", tiny["trunk"], "--games", 3, "--max-moves", 4,
            "--mode", "afterstate", "--baselines", "random"]  # fmt: skip
    code = (
        "import sys; from vh.cli import main; sys.argv = ['vh', 'play', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'jax' not in sys.modules, 'play imported jax'\n"
    )
    r = subprocess.run(  # a fresh process: nothing else has imported jax
        [sys.executable, "-c", code, *map(str, args), "--out", str(tmp_path / "a")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert f"wrote play results to {tmp_path / 'a'}" in r.stdout
    assert invoke(["play", *args, "--out", tmp_path / "b"]).exit_code == 0
    a, b = (json.loads((tmp_path / o / "play.json").read_text()) for o in ("a", "b"))
    assert [p["name"] for p in a["players"]] == ["run", "random"]
    for x, y in zip(a["players"], b["players"], strict=True):
        assert x["scores"] == y["scores"] and x["lengths"] == y["lengths"]
    assert a["players"][0]["lengths"] == [4, 4, 4]  # capped at --max-moves
    assert a["players"][0]["value"] == "score" and len(a["players"][0]["source"]["medians"]) == 3
    assert "| run | score | 3 |" in (tmp_path / "a" / "play.md").read_text()


# --------------------------------------------------------------------------- refusals


def test_head_from_another_trunk_is_refused(tiny, tmp_path):
    other = tmp_path / "other"
    assert (
        invoke(["trunk", "init", "--out", other, "--preset", "tiny", "--seed", "1"]).exit_code == 0
    )
    before = snapshot(tiny["run"])
    r = invoke(
        ["play", "--run", tiny["run"], "--init", other, "--games", 2, "--out", tmp_path / "o"]
    )
    line = assert_one_line_error(r)
    assert "another trunk" in line and str(other) in line
    assert not (tmp_path / "o").exists() and snapshot(tiny["run"]) == before


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--games", 0], "--games"),
        (["--games", -3], "--games"),
        (["--baselines", "random,alphago"], "unknown baseline 'alphago'"),
        (["--mode", "sideways"], "--mode"),
        (["--value", "p:100000"], "thresholds"),
        (["--value", "return"], "--value"),
        (["--depth", 3], "--depth"),
        (["--depth", 0], "--depth"),
    ],
)
def test_bad_options_are_refused_with_one_line(tiny, tmp_path, extra, words):
    out = tmp_path / "o"
    r = invoke(["play", "--run", tiny["run"], "--init", tiny["trunk"], "--out", out, *extra])
    assert words in assert_one_line_error(r)
    assert not out.exists()


@pytest.mark.parametrize("which", ["run", "trunk"])
def test_out_that_is_an_input_is_refused(tiny, which):
    before = snapshot(tiny[which])
    r = invoke(["play", "--run", tiny["run"], "--init", tiny["trunk"], "--out", tiny[which]])
    assert "--out" in assert_one_line_error(r)
    assert snapshot(tiny[which]) == before


def test_an_existing_play_folder_needs_overwrite_and_another_folder_is_never_replaced(tmp_path):
    from vh import durable
    from vh.extract.play import check_out

    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="--overwrite"):
        check_out(out, {}, overwrite=False)
    with pytest.raises(Exception, match="no .vh-owner.json"):
        check_out(out, {}, overwrite=True)
    (out / "notes.txt").unlink()
    durable.claim(out, "play")
    (out / "play.json").write_text("{}")
    check_out(out, {}, overwrite=True)  # vh's own play folder: replaceable
