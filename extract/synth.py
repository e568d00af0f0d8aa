"""``vh synth``: play 2048 games with a player and write a dataset dir as the ecosystem does.

A dataset dir (DESIGN §2) holds ``steps-00000.npy, steps-00001.npy, …`` (structured arrays of
one of the layouts of :mod:`vh.extract.formats`; the rows of a run are contiguous and in step
order, runs never straddle shards), optionally ``values-*.npy`` aligned row for row, and
``metadata.db`` with the ``runs`` and ``session`` tables. One row per state at which a move
was made; the final state of a game is not a row. Run ids start at 1.

Determinism: game ``i`` (run id ``i``) has a 32-bit seed derived from ``cfg.seed`` and ``i``
(distinct within a dataset), and every random draw of that game (its first two tiles, the
random player's choices, each spawn) is the next output of a SplitMix64 stream seeded with it.
So a game replays from its ``seed`` alone, whatever else is played alongside, and the same
config writes the same bytes (only ``session.created_at`` in the db differs).

Atomicity: everything is written into a sibling temp dir ``.NAME.tmp-PID`` with
``metadata.db`` last, then renamed into place by :func:`vh.durable.replace_dir` (an old dataset
is deleted only once the new one is in place); a killed synth never leaves a dir that looks
complete. An existing non-empty destination is refused unless ``overwrite``, which replaces
only a dataset dir vh made (ownership marker ``.vh-owner.json``, or a pre-marker one whose
``metadata.db`` session names vh) holding nothing but dataset files.

Axes: G = games (runs), R = rows (states), 4 = directions (UDLR).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

import vh
from vh import durable
from vh.config import SynthConfig, to_dict
from vh.errors import VhError, require_regular_file
from vh.extract import engine
from vh.extract.board import max_exponent, unpack
from vh.extract.formats import LEGACY, PACKED_42, PACKED_46, SELFPLAY, VALUES
from vh.extract.players import Player, heuristic, legal_values, make_player
from vh.extract.rewards import discounted_returns
from vh.progress import Progress, say
from vh.transforms import splitmix64

# games played at once: wide enough that numpy's per-call overhead vanishes, small enough that
# the per-move arrays stay in L2 (measured: 16k games ~20% faster than 64k or 100k)
WAVE_GAMES = 16_384
VALUE_SCALE = 1024.0  # values sidecar: *_scaled = raw / VALUE_SCALE (a 2048 merge is 2.0)
LEGACY_MAX_STEP = 65_535  # the legacy layout's step_index is u2
_DATASET_FILES = ("steps-*.npy", "steps.npy", "values-*.npy", "metadata.db")

# --------------------------------------------------------------------------- randomness

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment: stream k is state + k * this
_FIELD_BITS = 21  # each 64-bit draw gives three 21-bit uniforms


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def game_seeds(seed: int, run_ids: np.ndarray) -> np.ndarray:
    """32-bit seeds of the games with these run ids, distinct for distinct ids, uint32 ``(G,)``."""
    key = splitmix64(np.array([seed % (1 << 64)], dtype=np.uint64)).astype(np.uint32)
    return _fmix32(_fmix32(np.asarray(run_ids, dtype=np.uint32)) ^ key)


def _draw(seeds: np.ndarray, counter: int) -> np.ndarray:
    """Output ``counter`` of each game's SplitMix64 stream, uint64 ``(G,)``."""
    step = np.uint64(counter * int(_GOLDEN) % (1 << 64))  # Python ints: no overflow warning
    return splitmix64(seeds.astype(np.uint64) + step)


def _field(draw: np.ndarray, k: int) -> np.ndarray:
    """Uniform in [0, 1) from bits ``21k .. 21k+20`` of each draw (resolution 2**-21)."""
    bits = (draw >> np.uint64(_FIELD_BITS * k)) & np.uint64((1 << _FIELD_BITS) - 1)
    return bits.astype(np.float64) * (1.0 / (1 << _FIELD_BITS))


# --------------------------------------------------------------------------- play


# one row as played: 16 bytes, so a record is two uint64 words (plain words scatter ~6x
# faster than structured items)
_RECORD = np.dtype(
    [("board", "<u8"), ("reward", "<i4"), ("legal", "u1"), ("move", "u1"), ("pad", "<u2")]
)


@dataclass(frozen=True)
class Games:
    """Finished games; row arrays hold every game's states in run order (game 0 first)."""

    seeds: np.ndarray  # uint32 (G,)
    lengths: np.ndarray  # int64 (G,) moves made = rows of the game
    scores: np.ndarray  # int64 (G,) sum of merge rewards
    final: np.ndarray  # uint64 (G,) board when the game stopped
    rows: np.ndarray  # _RECORD (R,): state before the move, its legal mask, move, reward
    values: np.ndarray | None  # float32 (R, 4) the player's move values (None: it has none)

    def move_values(self) -> np.ndarray:
        """The player's values of the four moves per row, ``-inf`` where illegal, ``(R, 4)``."""
        return legal_values(self.rows["legal"]) if self.values is None else self.values

    def row_runs(self, run_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run id and step index of each row, ``(R,)`` each."""
        starts = np.cumsum(self.lengths) - self.lengths
        steps = np.arange(int(self.lengths.sum())) - np.repeat(starts, self.lengths)
        return np.repeat(np.asarray(run_ids), self.lengths), steps


def _new_boards(seeds: np.ndarray) -> np.ndarray:
    boards = np.zeros(seeds.shape[0], dtype=np.uint64)
    for counter in (0, 1):  # draws 0 and 1 place the two starting tiles
        d = _draw(seeds, counter)
        boards = engine.place_tiles(boards, _field(d, 1), _field(d, 2))
    return boards


def play_games(
    player: Player, seeds: np.ndarray, max_moves: int = 0, progress: Progress | None = None
) -> Games:
    """Play one game per seed to its end (or ``max_moves`` moves), all at once.

    Args:
        player: chooses the moves.
        seeds: uint32 ``(G,)`` game seeds; draw ``t + 2`` of a game's stream decides its move
            ``t`` (field 0: the random player's pick; fields 1, 2: the spawned tile).
        max_moves: stop a game after this many moves (0 = play until no move is legal).
        progress: reports moves/s, if given.

    Returns:
        The finished :class:`Games`.
    """
    seeds = np.asarray(seeds, dtype=np.uint32)
    n = seeds.shape[0]
    lengths, scores = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    final = np.zeros(n, dtype=np.uint64)
    game, live_seeds, boards = np.arange(n), seeds, _new_boards(seeds)
    steps = []  # per move t: (game, _RECORD rows, values) of the games in play
    while game.size:
        t = len(steps)
        legal = engine.legal_mask(boards)
        alive = legal != 0 if not max_moves or t < max_moves else np.zeros(game.size, bool)
        if not alive.all():  # retire finished games, keep the arrays dense
            final[game[~alive]], lengths[game[~alive]] = boards[~alive], t
            game, live_seeds, boards, legal = (a[alive] for a in (game, live_seeds, boards, legal))
            if not game.size:
                break
        draw = _draw(live_seeds, t + 2)
        dirs, values = player.choose(boards, legal, _field(draw, 0))
        moved, reward = engine.move(boards, dirs)
        rec = np.zeros(game.size, _RECORD)
        rec["board"], rec["reward"], rec["legal"], rec["move"] = boards, reward, legal, dirs
        steps.append((game, rec, None if values is None else values.astype(np.float32)))
        scores[game] += reward
        boards = engine.place_tiles(moved, _field(draw, 1), _field(draw, 2))
        if progress is not None:
            progress.update(game.size, f"{game.size:,} games in play")
    return _collect(seeds, lengths, scores, final, steps)


def play_waves(
    player: Player, seed: int, games: int, max_moves: int = 0, progress: Progress | None = None
):
    """Play games 1..``games`` in waves of ``WAVE_GAMES``; yields ``(run_ids, Games)``."""
    for first in range(1, games + 1, WAVE_GAMES):
        run_ids = np.arange(first, min(first + WAVE_GAMES, games + 1), dtype=np.int64)
        yield run_ids, play_games(player, game_seeds(seed, run_ids), max_moves, progress)


def _collect(seeds, lengths, scores, final, steps) -> Games:
    """Scatter the per-move records into run order: row (game g, move t) -> start[g] + t."""
    starts = np.cumsum(lengths) - lengths
    r = int(lengths.sum())
    rows = np.zeros(r, _RECORD)
    words = rows.view(np.uint64).reshape(r, 2)  # (R, 2)
    values = None if not steps or steps[0][2] is None else np.empty((r, 4), np.float32)
    for t, (game, rec, vals) in enumerate(steps):
        dest = starts[game] + t
        words[dest] = rec.view(np.uint64).reshape(-1, 2)
        if values is not None:
            values[dest] = vals
    return Games(seeds, lengths, scores, final, rows, values)


# --------------------------------------------------------------------------- rows


def _step_rows(cfg: SynthConfig, player: Player, games: Games, run_ids: np.ndarray) -> np.ndarray:
    """The step rows of these games in ``cfg.layout``, a structured array ``(R,)``."""
    run, step = games.row_runs(run_ids)
    board = np.ascontiguousarray(games.rows["board"])
    values = games.move_values()
    branch = np.where(np.isfinite(values), values, 0.0)  # illegal moves: 0
    if cfg.layout == "selfplay":
        rows = np.zeros(run.shape[0], SELFPLAY)
        rows["step_idx"], rows["exps"], rows["logp"] = step, unpack(board), player.logp(values)
    elif cfg.layout == "legacy":
        _check_legacy_steps(games.lengths, run_ids)
        rows = np.zeros(run.shape[0], LEGACY)
        rows["step_index"], rows["move"], rows["ev_values"] = step, games.rows["move"], branch
    else:
        rows = np.zeros(run.shape[0], PACKED_46 if cfg.board_eval else PACKED_42)
        rows["step_index"], rows["branch_evs"] = step, branch
        rows["max_rank"] = max_exponent(unpack(board))
        rows["seed"] = np.repeat(games.seeds, games.lengths)
        if cfg.board_eval:  # the player's heuristic, rounded: about 1.6M for a live board
            rows["board_eval"] = np.rint(heuristic(board)).astype(np.int32)
    rows["run_id"] = run
    for name, field in (("board", "board"), ("move_dir", "move"), ("ev_legal", "legal")):
        if name in rows.dtype.names:
            rows[name] = games.rows[field]
    return rows


def _check_legacy_steps(lengths: np.ndarray, run_ids: np.ndarray) -> None:
    """The legacy layout stores step_index as u2: refuse a game longer than 65536 moves."""
    too_long = np.flatnonzero(np.asarray(lengths) > LEGACY_MAX_STEP + 1)
    if too_long.size:
        raise VhError(
            f"run {int(run_ids[too_long[0]])} has {int(lengths[too_long[0]])} steps, "
            f"more than the legacy layout's u2 step_index holds; set "
            f"synth.max_moves <= {LEGACY_MAX_STEP + 1} or use another layout",
            field="step_index",
        )


def _value_rows(games: Games, run_ids: np.ndarray, gamma: float) -> np.ndarray:
    """The values sidecar rows (VALUES dtype) aligned with the step rows."""
    run, step = games.row_runs(run_ids)
    rows = np.zeros(run.shape[0], VALUES)
    reward = games.rows["reward"]
    rows["run_id"], rows["step_index"], rows["reward"] = run, step, reward
    rows["reward_scaled"] = reward / VALUE_SCALE
    returns = discounted_returns(reward, run, gamma)
    rows["return_raw"], rows["return_scaled"] = returns, returns / VALUE_SCALE
    return rows


class _ShardWriter:
    """Pack whole runs greedily into shards of at most ``shard_rows`` rows.

    A run longer than ``shard_rows`` gets a shard of its own. Boundaries depend only on the
    sequence of run lengths, so they are the same whatever the wave size.
    """

    def __init__(self, folder: Path, shard_rows: int, names: tuple[str, ...]):
        self.folder, self.shard_rows, self.names = folder, shard_rows, names
        self.pending: list[tuple[np.ndarray, ...]] = []
        self.fill = 0
        self.shards = 0

    def add(self, arrays: tuple[np.ndarray, ...], lengths: np.ndarray) -> None:
        """Add the rows of complete runs (``arrays`` aligned, ``lengths`` rows per run)."""
        cuts, offset = [], 0
        for n in lengths.tolist():
            if self.fill and self.fill + n > self.shard_rows:
                cuts.append(offset)
                self.fill = 0
            self.fill += n
            offset += n
        pieces = [np.split(a, cuts) for a in arrays]
        for i in range(len(cuts)):
            self.pending.append(tuple(p[i] for p in pieces))
            self._flush()
        self.pending.append(tuple(p[-1] for p in pieces))

    def close(self) -> int:
        if self.fill:
            self._flush()
        return self.shards

    def _flush(self) -> None:
        for name, parts in zip(self.names, zip(*self.pending, strict=True), strict=True):
            np.save(self.folder / f"{name}-{self.shards:05d}.npy", np.concatenate(parts))
        self.pending = []
        self.shards += 1


# --------------------------------------------------------------------------- destination


def _made_by_synth(out: Path) -> bool:
    """A dataset dir of a vh before ownership markers: its metadata.db session names vh.

    Datasets of the ecosystem have the same layout; only the ``vh_version`` row synth writes
    tells them apart, so those are never overwritten.
    """
    db = out / "metadata.db"
    try:
        require_regular_file(db)
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)  # never writes
        try:
            row = con.execute(
                "SELECT meta_value FROM session WHERE meta_key = 'vh_version'"
            ).fetchone()
        finally:
            con.close()
    except (VhError, sqlite3.Error):
        return False
    return row is not None


def _check_destination(out: Path, overwrite: bool) -> None:
    """Refuse a destination that holds anything, unless overwriting a dataset dir vh made."""
    if os.path.lexists(out) and not out.is_dir():
        raise VhError("exists and is not a directory", path=out, code=3)
    if out.is_dir() and durable.entries(out) and not overwrite:
        raise VhError(
            "already exists and is not empty; pass --overwrite to replace it", path=out, code=3
        )
    durable.check_owned(out, "dataset", files=_DATASET_FILES, legacy=_made_by_synth)


# --------------------------------------------------------------------------- metadata.db


def _runs_rows(games: Games, run_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Columns of the runs table for these games; highest_tile is a tile value (2048)."""
    highest = np.left_shift(1, max_exponent(unpack(games.final)), dtype=np.int64)
    return {
        "id": run_ids,
        "seed": games.seeds,
        "steps": games.lengths,
        "score": games.scores,
        "highest_tile": highest,
    }


def _session(cfg: SynthConfig, rows: int, shards: int) -> dict[str, str]:
    """The session table: how the dataset was made, with the resolved config as JSON."""
    return {
        "player": cfg.player,
        "seed": str(cfg.seed),
        "games": str(cfg.games),
        "layout": cfg.layout if cfg.layout != "packed" or cfg.board_eval else "packed42",
        "vh_version": vh.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": json.dumps(to_dict(cfg), sort_keys=True),
        "value_scale": str(VALUE_SCALE) if cfg.values else "",
        "rows": str(rows),
        "shards": str(shards),
    }


def _write_db(
    path: Path, runs: dict[str, np.ndarray], session: dict[str, str], legacy: bool
) -> None:
    """Write ``runs(id, seed, steps, max_score, highest_tile)`` and ``session(meta_key,
    meta_value)``; legacy metadata names the columns ``num_moves`` and ``final_score``."""
    steps_col, score_col = ("num_moves", "final_score") if legacy else ("steps", "max_score")
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute(
                f"CREATE TABLE runs (id INTEGER PRIMARY KEY, seed INTEGER, "
                f"{steps_col} INTEGER, {score_col} INTEGER, highest_tile INTEGER)"
            )
            cols = [runs[k].tolist() for k in ("id", "seed", "steps", "score", "highest_tile")]
            con.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?)", zip(*cols, strict=True))
            con.execute("CREATE TABLE session (meta_key TEXT PRIMARY KEY, meta_value TEXT)")
            con.executemany("INSERT INTO session VALUES (?, ?)", sorted(session.items()))
    finally:
        con.close()


# --------------------------------------------------------------------------- synth


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synth` wrote."""

    out: Path
    rows: int
    runs: int
    shards: int
    seconds: float
    highest_tile: int  # the largest tile of any game
    mean_score: float


def _check_config(cfg: SynthConfig) -> None:
    for key, ok in (
        ("games", cfg.games >= 1),
        ("shard_rows", cfg.shard_rows >= 1),
        ("max_moves", cfg.max_moves >= 0),
        ("gamma", 0.0 <= cfg.gamma <= 1.0),
        ("seed", cfg.seed >= 0),
    ):
        if not ok:
            value = getattr(cfg, key)
            raise VhError(f"invalid value {value!r}", field=f"synth.{key}")
    if cfg.layout not in ("packed", "selfplay", "legacy"):
        raise VhError(
            f"unknown layout {cfg.layout!r} (valid: legacy, packed, selfplay)", field="synth.layout"
        )
    if cfg.metadata not in ("modern", "legacy"):
        raise VhError(
            f"unknown metadata {cfg.metadata!r} (valid: legacy, modern)", field="synth.metadata"
        )


def synth(
    cfg: SynthConfig, out: str | os.PathLike, *, overwrite: bool = False, progress: bool = True
) -> SynthSummary:
    """Play ``cfg.games`` games and write a dataset dir at ``out``.

    Args:
        cfg: the resolved synth config (recorded in ``session.config``).
        out: the dataset dir to create.
        overwrite: replace an existing dataset dir (never a dir holding other files).
        progress: print progress lines (moves/s) to stderr.

    Returns:
        A :class:`SynthSummary`.

    Raises:
        VhError: a bad config value, a refused destination, or a game too long for the legacy
            layout. Nothing is left at ``out`` then.
    """
    # ---- check the config and the destination before any work
    out = Path(out)
    _check_config(cfg)
    player = make_player(cfg.player, cfg.depth)
    durable.recover_dir(out)  # a synth killed mid-replace: its old dataset back, temps gone
    _check_destination(out, overwrite)
    tmp = durable.temp_dir(out)
    bar = Progress(0, "synth", unit="moves", log=say if progress else None)
    try:
        # ---- play in waves of games; whole runs go to the shards in run-id order
        names = ("steps", "values") if cfg.values else ("steps",)
        writer = _ShardWriter(tmp, cfg.shard_rows, names)
        runs = []
        for run_ids, games in play_waves(player, cfg.seed, cfg.games, cfg.max_moves, bar):
            arrays = (_step_rows(cfg, player, games, run_ids),)
            if cfg.values:
                arrays += (_value_rows(games, run_ids, cfg.gamma),)
            writer.add(arrays, games.lengths)
            runs.append(_runs_rows(games, run_ids))
        shards = writer.close()
        seconds = bar.close(f"{cfg.games:,} games")
        # ---- metadata.db last: a dir without it is not a finished dataset
        table = {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}
        rows = int(table["steps"].sum())
        _write_db(tmp / "metadata.db", table, _session(cfg, rows, shards), cfg.metadata == "legacy")
        durable.claim(tmp, "dataset")
        durable.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    highest, mean_score = int(table["highest_tile"].max()), float(table["score"].mean())
    return SynthSummary(out, rows, cfg.games, shards, seconds, highest, mean_score)
