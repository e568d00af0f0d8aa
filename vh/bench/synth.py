"""``vh bench synth`` and ``vh bench decode``: the engine's moves/s and the decoders' rows/s.

Both are CPU-bound numpy loops in one process; their sections are printed (BENCHMARKS.md's
"synth and decode" section is written by hand from the two).
"""

from __future__ import annotations

import time

import numpy as np

from vh.bench.report import Section, number, section, table, times, today
from vh.extract.board import unpack
from vh.extract.formats import PACKED_46, SELFPLAY


def bench_play(
    player: str, games: int, max_moves: int, depth: int = 2, seed: int = 0
) -> tuple[int, float, float]:
    """Play ``games`` games as synth does (waves), up to ``max_moves`` moves each, unwritten.

    Returns:
        ``(moves, wall seconds, CPU seconds of this process)``; numpy runs these loops on one
        thread, so CPU time is the wall time the same work takes on an idle core.
    """
    from vh.extract.players import make_player
    from vh.extract.synth import play_waves

    chosen = make_player(player, depth)
    t0, c0 = time.perf_counter(), time.process_time()
    moves = sum(int(g.lengths.sum()) for _, g in play_waves(chosen, seed, games, max_moves))
    return moves, time.perf_counter() - t0, time.process_time() - c0


def synth_section(plays: dict[str, tuple[int, int, float, float]], depth: int) -> Section:
    """The ``synth`` section from player -> (games, moves, wall s, CPU s)."""
    rate = {k: moves / wall for k, (_, moves, wall, _) in plays.items()}
    rows = [
        [
            f"{name}: {number(moves)} moves of {number(games)} games in {number(wall, 2)} s",
            number(rate[name]),
            number(moves / cpu),
        ]
        for name, (games, moves, wall, cpu) in plays.items()
    ]
    return section(
        "synth",
        f"`vh bench synth` — games played in synth's waves, one process; {today()}.",
        table(["what", "moves/s", "moves per CPU second"], [False, True, True], rows),
        closing=f"random/greedy speed ratio {times(rate['random'] / rate['greedy'], 1)}, "
        f"greedy/expectimax(depth {depth}) {times(rate['greedy'] / rate['expectimax'], 0)}",
    )


def bench_decode(rows: int, batch: int = 65_536, seed: int = 0) -> dict[str, float]:
    """Decode throughput (rows/s) into a preallocated token buffer, batch by batch.

    ``packed``: PACKED_46 rows -> exponents with :func:`vh.extract.board.unpack` (board and
    tile_65536_mask fields); ``selfplay``: SELFPLAY rows -> a copy of their ``exps`` field.
    """
    rng = np.random.default_rng(seed)
    packed, selfplay = np.zeros(rows, PACKED_46), np.zeros(rows, SELFPLAY)
    packed["board"] = rng.integers(0, np.iinfo(np.int64).max, rows, dtype=np.int64)
    selfplay["exps"] = unpack(packed["board"])
    buf = np.empty((batch, 16), dtype=np.uint8)
    rates = {}
    for name, data in (("packed", packed), ("selfplay", selfplay)):
        t0 = time.perf_counter()
        for i in range(0, rows, batch):
            chunk = data[i : i + batch]
            out = buf[: chunk.shape[0]]
            if name == "packed":
                unpack(chunk["board"], chunk["tile_65536_mask"], out=out)
            else:
                np.copyto(out, chunk["exps"])
        rates[name] = rows / (time.perf_counter() - t0)
    return rates


def decode_section(rates: dict[str, float], rows: int, batch: int) -> Section:
    """The ``decode`` section from layout -> rows/s."""
    return section(
        "decode",
        f"`vh bench decode --rows {rows} --batch {batch}` — dataset rows to tokens in a "
        f"preallocated buffer; {today()}.",
        table(
            ["layout", "rows/s"],
            [False, True],
            [[name, number(rate)] for name, rate in rates.items()],
        ),
        closing=f"decoded {rows:,} rows per layout in batches of {batch:,}; packed/selfplay "
        f"speed ratio {times(rates['packed'] / rates['selfplay'])}",
    )
