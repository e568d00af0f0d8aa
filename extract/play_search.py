"""Move choice for `vh play`: a value function searched one or two moves deep, over many boards
at once.

A *value function* maps packed boards ``uint64 (M,)`` to values ``float64 (M,)`` (a head on a
trunk, or a planted function in the tests). :func:`move_values` turns it into the value of
each of the four moves of each board:

- ``expectation`` (depth 1): the exact expectation over the spawn after the move (a 2 with
  p 0.9, a 4 with p 0.1, uniform over the empty cells) of the value of the resulting state;
- ``afterstate``: the value of the board right after the move, before the spawn (about
  2 × the empty cells fewer evaluations).

Depth d > 1 is expectimax: a move's value is the expectation over the spawn of the best move
value at depth d − 1 of each child; the mode says how the deepest moves are valued. A child
with no legal move ends the game: its value is known where the value says what happens next
(:func:`terminal_function`: no more return; reached T or not) and is the value function's
own otherwise (the final score of a dead board: the head's estimate). Each level multiplies the leaves by
about 4 × 2 × the empty cells (depth 2: ~200 in afterstate mode, ~2,000 in expectation mode
per board; duplicates are evaluated once).

A move's value is ``reward_weight · merge reward + discount · leaf`` (return heads add the
reward and discount; score and probability heads value the state alone: the final score of
the game already counts the points scored on the way). Leaves are deduplicated and evaluated
together, ``batch`` boards per call of the value function (at depth 2: within each block of
``batch`` spawn children).

The players here follow :class:`vh.extract.players.Player`'s ``choose(boards, legal, u)``,
so :func:`vh.extract.synth.play_games` plays them like the built-in ones. Ties go to the first
move in UDLR order (deterministic).

Axes: N = boards, 4 = directions (UDLR), C = (board, empty cell, tile) children.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vh.errors import VhError
from vh.extract import engine
from vh.extract.board import SHIFTS, unpack
from vh.progress import say

ValueFn = Callable[[np.ndarray], np.ndarray]
MODES = ("expectation", "afterstate")
LEAF_BATCH = 8192  # boards per call of the value function (one trunk forward each)


# --------------------------------------------------------------------------- leaf values


def parse_value(text: str | None) -> tuple[str | None, int | None]:
    """``score`` / ``return`` / ``p:T`` -> ``(name, T)``; VhError for anything else."""
    if text is None or text in ("score", "return"):
        return text, None
    if text.startswith("p:") and text[2:].isdigit() and int(text[2:]) > 0:
        return "p", int(text[2:])
    raise VhError(f"{text!r} is not score, return or p:T (T a tile, e.g. p:2048)", field="--value")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _threshold_q(kind: str, z: np.ndarray) -> np.ndarray:
    """``q (n, K) = P(highest >= T_k)`` from an ordinal or tiles head's logits."""
    from vh.eval import metrics as M

    if kind == "ordinal":
        return 1.0 / (1.0 + np.exp(-z))
    return M.q_from_buckets(_softmax(z))


def resolve_value(spec, value: str | None) -> tuple[str, int | None]:
    """The value this head plays with (its natural one by default); VhError if it has none."""
    name, t = parse_value(value)
    thresholded = spec.kind in ("ordinal", "tiles")
    name = name or ("return" if spec.kind == "return" else "score")
    if name == "return" and spec.kind != "return":
        raise VhError(f"a {spec.kind} head has no return value (use score)", field="--value")
    if name == "score" and spec.kind == "return":
        raise VhError("a return head values returns (use --value return)", field="--value")
    if name == "p":
        if not thresholded:
            raise VhError(f"a {spec.kind} head gives no P(reach T)", field="--value")
        if t not in spec.thresholds:
            raise VhError(
                f"{t} is not one of the head's thresholds {list(spec.thresholds)}", field="--value"
            )
        return f"p:{t}", t
    return name, None


def leaf_function(spec, value: str, medians: np.ndarray | None) -> Callable:
    """Logits ``(n, out)`` -> leaf values ``(n,)`` float64, for a resolved ``value``."""
    from vh.eval import metrics as M
    from vh.transforms import muzero_h_inv

    if spec.kind == "return":
        if spec.encoding == "scalar":
            return lambda z: muzero_h_inv(z[:, 0])
        return lambda z: muzero_h_inv(_softmax(z) @ spec.bin_centers)
    if spec.kind == "logscore":
        return lambda z: _softmax(z) @ np.expm1(spec.bin_centers)
    if value.startswith("p:"):
        k = list(spec.thresholds).index(int(value[2:]))
        return lambda z: _threshold_q(spec.kind, z)[:, k]
    return lambda z: M.expected_score(q=_threshold_q(spec.kind, z), medians=medians)


# --------------------------------------------------------------------------- search


def terminal_function(value: str) -> ValueFn | None:
    """The exact value of a board with no legal move, where ``value`` determines it: 0 for a
    return (nothing follows), whether the board holds T for ``p:T`` (its highest tile is the
    game's); ``None`` (ask the value function) for the expected score."""
    if value == "return":
        return lambda boards: np.zeros(np.shape(boards), np.float64)
    if value.startswith("p:"):
        t = int(value[2:])
        return lambda boards: ((1 << unpack(boards).max(axis=1).astype(np.int64)) >= t) * 1.0
    return None


def spawn_children(parents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every board a spawn can make from each parent, with its probability.

    Args:
        parents: uint64 ``(M,)`` boards, each with at least one empty cell.

    Returns:
        ``(children uint64 (C,), parent index int64 (C,), probability float64 (C,))``: per
        empty cell a 2 (p 0.9 / empty cells) and a 4 (p 0.1 / empty cells).
    """
    empty = unpack(parents) == 0  # (M, 16)
    board_of, cell = np.nonzero(empty)  # one entry per (parent, empty cell)
    n_empty = empty.sum(axis=1)[board_of]
    shifts = SHIFTS[cell]
    base = parents[board_of]
    children = np.concatenate([base | (np.uint64(1) << shifts), base | (np.uint64(2) << shifts)])
    prob = np.concatenate(
        [(1 - engine.FOUR_PROB) / n_empty, np.full(n_empty.shape, engine.FOUR_PROB) / n_empty]
    )
    return children, np.concatenate([board_of, board_of]), prob


def evaluate(value_fn: ValueFn, boards: np.ndarray, batch: int = LEAF_BATCH) -> np.ndarray:
    """Values of boards, each distinct board evaluated once, ``batch`` at a time, ``(M,)``."""
    uniq, inv = np.unique(boards, return_inverse=True)
    out = np.empty(uniq.shape[0], dtype=np.float64)
    for a in range(0, uniq.shape[0], batch):
        out[a : a + batch] = value_fn(uniq[a : a + batch])
    return out[inv.ravel()]


def expected_after_spawn(value_fn: ValueFn, parents: np.ndarray, batch: int = LEAF_BATCH):
    """``E_spawn[V(child)]`` for each parent, float64 ``(M,)`` (a full parent: ``V(parent)``)."""
    children, parent, prob = spawn_children(parents)
    leaf = evaluate(value_fn, children, batch)
    out = np.bincount(parent, weights=prob * leaf, minlength=parents.shape[0])
    full = np.bincount(parent, minlength=parents.shape[0]) == 0  # no empty cell: no spawn
    if full.any():
        out[full] = evaluate(value_fn, parents[full], batch)
    return out


@dataclass(frozen=True)
class Search:
    """How moves are valued: the mode, and how the merge reward enters a move's value."""

    mode: str = "expectation"
    reward_weight: float = 0.0
    discount: float = 1.0
    batch: int = LEAF_BATCH
    depth: int = 1  # moves searched ahead (see the module docstring)
    terminal: ValueFn | None = None  # value of a game-over board (None: the value function's)


def move_values(
    value_fn: ValueFn, boards: np.ndarray, search: Search, depth: int | None = None
) -> np.ndarray:
    """Values of the four moves of each board, float64 ``(N, 4)``, ``-inf`` where illegal.

    ``depth``: moves searched ahead (default ``search.depth``); see the module docstring.
    """
    depth = search.depth if depth is None else depth
    b = engine.as_boards(boards)
    kids, rewards = engine.move_all(b)  # (N, 4)
    legal = kids != b[:, None]
    after = kids[legal]  # (L,) afterstates of the legal moves
    if depth > 1:  # a chance node over the spawn, then the best move one level down
        leaf = expected_after_spawn(
            lambda child: best_value(value_fn, child, search, depth - 1), after, search.batch
        )
    elif search.mode == "afterstate":
        leaf = evaluate(value_fn, after, search.batch)
    else:
        leaf = expected_after_spawn(value_fn, after, search.batch)
    values = np.full(kids.shape, -np.inf)
    values[legal] = search.reward_weight * rewards[legal] + search.discount * leaf
    return values


def best_value(value_fn: ValueFn, boards: np.ndarray, search: Search, depth: int) -> np.ndarray:
    """The value of each board to move from: its best move's value at ``depth``, or, where
    no move is legal (the game is over), ``search.terminal``'s value of it (the value
    function's when that is None); ``(M,)``."""
    best = move_values(value_fn, boards, search, depth).max(axis=1)
    over = np.isneginf(best)
    if over.any():
        dead = engine.as_boards(boards)[over]
        best[over] = evaluate(search.terminal or value_fn, dead, search.batch)
    return best


@dataclass(frozen=True)
class ValuePlayer:
    """Plays the move of highest value under a value function (a ``Player`` look-alike)."""

    name: str
    value_fn: ValueFn
    search: Search

    def choose(self, boards, legal, u) -> tuple[np.ndarray, np.ndarray]:
        """``(dirs uint8 (N,), values float64 (N, 4))``; ``legal`` and ``u`` are not needed."""
        values = move_values(self.value_fn, boards, self.search)
        return np.argmax(values, axis=1).astype(np.uint8), values


@dataclass(frozen=True)
class PolicyPlayer:
    """Plays the argmax of a policy's logits over the legal moves."""

    name: str
    logits_fn: Callable[[np.ndarray], np.ndarray]  # boards (N,) -> logits (N, 4), UDLR
    batch: int = LEAF_BATCH

    def choose(self, boards, legal, u) -> tuple[np.ndarray, np.ndarray]:
        b = engine.as_boards(boards)
        z = np.concatenate(
            [self.logits_fn(b[a : a + self.batch]) for a in range(0, b.shape[0], self.batch)]
            or [np.zeros((0, 4))]
        ).astype(np.float64)
        bits = (np.asarray(legal)[:, None] >> np.arange(4, dtype=np.uint8)) & 1  # (N, 4)
        values = np.where(bits == 1, z, -np.inf)
        return np.argmax(values, axis=1).astype(np.uint8), values


# --------------------------------------------------------------------------- figures

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (``(0, 1)`` when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # k = 0 and k = n put an end exactly at 0 or 1 (rounding would leave p-hat outside)
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    return lo, 1.0 if k == n else min(1.0, centre + half)


def summarize(games, milestones: tuple[int, ...], seconds: float) -> dict:
    """Figures of one player's games (a :class:`vh.extract.synth.Games`)."""
    scores = games.scores.astype(np.float64)
    highest = 2 ** unpack(games.final).max(axis=1).astype(np.int64)
    highest[highest == 1] = 0
    moves = int(games.lengths.sum())
    reach = {}
    for t in milestones:
        k = int((highest >= t).sum())
        lo, hi = wilson(k, scores.size)
        reach[str(t)] = {"k": k, "rate": k / max(scores.size, 1), "lo": lo, "hi": hi}
    return {
        "games": int(scores.size),
        "mean_score": float(scores.mean()) if scores.size else 0.0,
        "median_score": float(np.median(scores)) if scores.size else 0.0,
        "max_score": int(scores.max()) if scores.size else 0,
        "mean_moves": moves / max(scores.size, 1),
        "moves": moves,
        "seconds": seconds,
        "moves_per_s": moves / max(seconds, 1e-9),
        "reach": reach,
        "scores": [int(s) for s in games.scores],
        "lengths": [int(n) for n in games.lengths],
    }


# --------------------------------------------------------------------------- playing


class GameProgress:
    """Progress of one player's games for :func:`vh.extract.synth.play_games`: moves/s, and
    an ETA that assumes each game in play lasts about as long again as the finished ones did
    on average (a rough guide: game lengths are far from regular)."""

    def __init__(self, label: str, games: int, log=say, every: float = 5.0):
        self.label, self.games, self.log, self.every = label, games, log, every
        self.t, self.moves, self.alive, self.done_len = 0, 0, games, 0
        self.t0 = self._last = time.perf_counter()

    def update(self, n: int, extra: str = "") -> None:
        """One move of each of the ``n`` games in play (play_games calls it once per step)."""
        self.done_len += (self.alive - n) * self.t  # games that ended before this step
        self.alive, self.moves, self.t = n, self.moves + n, self.t + 1
        now = time.perf_counter()
        if self.log is not None and now - self._last >= self.every:
            self._last = now
            self.log(self._line(now))

    def _line(self, now: float) -> str:
        from vh.progress import _fmt_secs

        rate = self.moves / max(now - self.t0, 1e-9)
        ended = self.games - self.alive
        if ended:
            left = self.alive * max(self.done_len / ended - self.t, 0.25 * self.t)
            eta = f"ETA ~{_fmt_secs(left / max(rate, 1e-9))}"
        else:
            eta = "ETA ?"
        return (
            f"play {self.label}: {self.moves:,} moves, {rate:,.0f} moves/s, "
            f"{self.alive:,}/{self.games:,} games in play, {eta}"
        )


def play_one(
    player, seeds: np.ndarray, milestones: tuple[int, ...], log=say, max_moves: int = 0
) -> dict:
    """Play one game per seed with ``player``; its figures (see :func:`summarize`)."""
    from vh.extract.synth import play_games

    progress = GameProgress(player.name, seeds.shape[0], log)
    t0 = time.perf_counter()
    games = play_games(player, seeds, max_moves, progress=progress)
    result = summarize(games, milestones, time.perf_counter() - t0)
    if log is not None:
        log(
            f"play {player.name}: {result['games']:,} games, mean score "
            f"{result['mean_score']:,.0f}, {result['moves']:,} moves in {result['seconds']:.1f} s "
            f"({result['moves_per_s']:,.0f} moves/s)"
        )
    return result


def render_md(record: dict) -> str:
    """``play.md``: one row per player, reach rates with their Wilson 95 % intervals."""
    c, ms = record["config"], record["milestones"]
    lines = [
        "# Play",
        "",
        f"{c['games']:,} games per player, seed {c['seed']}, depth {c['depth']} "
        f"({c['mode']}), device {c['device']}; every player plays the same seeded games. "
        "Reach: share of games whose highest tile reached T, Wilson 95 % interval.",
        "",
        "| player | value | games | mean score | median score | "
        + " | ".join(f"reach {t}" for t in ms)
        + " | moves/s |",
        "| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in ms) + " | ---: |",
    ]
    for p in record["players"]:
        reach = [
            f"{r['rate']:.1%} [{r['lo']:.1%}, {r['hi']:.1%}]"
            for r in (p["reach"][str(t)] for t in ms)
        ]
        lines.append(
            f"| {p['name']} | {p.get('value', 'baseline')} | {p['games']:,} | "
            f"{p['mean_score']:,.0f} | {p['median_score']:,.0f} | "
            + " | ".join(reach)
            + f" | {p['moves_per_s']:,.0f} |"
        )
    return "\n".join(lines) + "\n"
