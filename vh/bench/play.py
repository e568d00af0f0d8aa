"""``vh bench play``: moves/s of `vh play` per trunk size and search (:data:`SEARCHES`).

A seeded random-weight trunk of each preset with a random ordinal probe (3 thresholds, the
expected score of made-up bucket medians) plays a fixed number of moves of seeded games, in
each search. Speed does not depend on what the weights learned, so random ones do. Each move
of a game evaluates its leaves in batches of ``LEAF_BATCH`` boards, one trunk forward per
batch: at depth 1, ``expectation`` about 2 x empty cells x legal moves leaves per move,
``afterstate`` one per legal move; depth 2 (afterstate leaves) about 2 x empty cells x legal
moves times as many as depth-1 afterstate.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from vh.bench.report import Section, machine, number, section, table, times, today
from vh.progress import say

_MEDIANS = np.array([0.0, 1000.0, 3000.0, 7000.0])  # made-up bucket medians (speed only)
# (mode, depth) measured per preset; depth-2 expectation (~2,000 leaves a move) is left out
SEARCHES = (("expectation", 1), ("afterstate", 1), ("afterstate", 2))


def _player(preset: str, mode: str, depth: int, device: str):
    """A random ``preset`` trunk + random probe as a :class:`ValuePlayer`, and its width."""
    import torch

    from vh.eval import metrics as M
    from vh.extract.play import torch_fn
    from vh.extract.play_search import Search, ValuePlayer
    from vh.extract.trunk import load_trunk, write_init_dir

    with tempfile.TemporaryDirectory() as tmp:
        write_init_dir(f"{tmp}/trunk", preset, seed=0)
        lt = load_trunk(f"{tmp}/trunk", device=device)
    torch.manual_seed(0)
    head = torch.nn.Linear(lt.dim, 3).to(device).eval().requires_grad_(False)

    def leaf(z):
        return M.expected_score(q=1.0 / (1.0 + np.exp(-z)), medians=_MEDIANS)

    fn = torch_fn(lt.model, lambda m, t: head(m.pooled(t)), device, leaf)
    return ValuePlayer(f"{preset}/{mode}/{depth}", fn, Search(mode, depth=depth)), lt.dim


def benchmark(presets, games: int, moves: int, device: str = "cpu", log=say) -> list[dict]:
    """Play ``games`` seeded games for ``moves`` moves per preset and search; moves/s each."""
    import torch

    from vh.extract.synth import game_seeds, play_games

    seeds = game_seeds(0, np.arange(1, games + 1, dtype=np.int64))
    load = os.getloadavg()[0]  # a shared machine: the figures scale with the cores left
    rows = []
    for preset in presets:
        for mode, depth in SEARCHES:
            player, dim = _player(preset, mode, depth, device)
            t0 = time.perf_counter()
            played = play_games(player, seeds, max_moves=moves)
            wall = time.perf_counter() - t0
            n = int(played.lengths.sum())
            rows.append({"preset": preset, "dim": dim, "mode": mode, "depth": depth, "moves": n,
                         "seconds": wall, "moves_per_s": n / wall,
                         "threads": torch.get_num_threads(), "load": load})  # fmt: skip
            log(f"bench play {preset} {mode} depth {depth}: {n:,} moves in {wall:.1f} s "
                f"({n / wall:,.1f}/s)")  # fmt: skip
    return rows


def play_section(rows: list[dict], games: int, moves: int, device: str) -> Section:
    """The ``play`` section of BENCHMARKS.md."""
    import torch

    cells = [
        [f"{r['preset']} (D = {r['dim']})", r["mode"], str(r["depth"]), number(r["moves"]),
         number(r["seconds"], 1), number(r["moves_per_s"], 1)]
        for r in rows
    ]  # fmt: skip
    rate = {(r["preset"], r["mode"], r["depth"]): r["moves_per_s"] for r in rows}
    first = rows[0]["preset"]
    ratio = rate[(first, "afterstate", 1)] / rate[(first, "expectation", 1)]
    return section(
        "play",
        f"`vh bench play --games {games} --moves {moves} --presets "
        f"{','.join(dict.fromkeys(r['preset'] for r in rows))}` — {games} seeded games, the first "
        f"{moves} moves of each, all games advancing together, with a random-weight "
        f"trunk and a random ordinal probe (speed does not depend on what the weights learned); "
        f"{device}, torch {torch.__version__} ({rows[0]['threads']} threads), {machine()}, load "
        f"average {rows[0]['load']:.1f} at the start; {today()}. "
        "Early moves have many empty cells, so expectation mode evaluates ~100 leaves per move "
        "here; later moves of long games fewer.",
        table(
            ["trunk", "mode", "depth", "moves", "seconds", "moves/s"],
            [False, False, True, True, True, True],
            cells,
        ),  # fmt: skip
        closing=f"play moves/s at depth 1: {first} expectation "
        f"{number(rate[(first, 'expectation', 1)], 1)}, afterstate/expectation {times(ratio, 1)}",
    )
