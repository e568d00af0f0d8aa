"""Players: choose a move for each of many boards at once, deterministically.

Every player maps ``(boards, legal, u)`` to a direction per board and its values of the four
moves. ``u`` is one uniform per board that the caller draws from the game's own random stream,
so a player never owns a generator and a game replays from its seed alone.

- ``random``: uniform over the legal moves (all legal moves valued 0).
- ``greedy``: one ply: the move's merge reward plus the heuristic of the board it leads to.
- ``expectimax``: ``depth`` moves deep, with exact chance nodes between them (every empty cell,
  a 2 with p=0.9 and a 4 with p=0.1, no sampling), merge rewards summed along the path and the
  heuristic at the leaves. Greedy is expectimax of depth 1. A depth-2 decision expands at most
  4 x 30 x 4 = 480 leaves per board; boards are searched in blocks to bound memory.

The heuristic is the well-known row-table heuristic of nneonneo's 2048-ai (empty cells,
mergeable neighbours, monotonicity, a penalty on large tiles, and a large constant that makes
any live board worth more than a dead one), summed over the 4 rows and the 4 columns.

Values of illegal moves are ``-inf``. A player's policy (for ``logp``) is the softmax of its
move values over the legal moves at its temperature: uniform for ``random``; the search
players play the mode of that softmax.

Axes: N = boards, 4 = directions (UDLR).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vh.errors import VhError
from vh.extract import engine
from vh.extract.board import SHIFTS, unpack

# --------------------------------------------------------------------------- heuristic

LOST_PENALTY = 200000.0  # every live row is worth this much; a dead board is worth 0
MONOTONICITY_POWER, MONOTONICITY_WEIGHT = 4.0, 47.0
SUM_POWER, SUM_WEIGHT = 3.5, 11.0
MERGES_WEIGHT, EMPTY_WEIGHT = 700.0, 270.0
SEARCH_TEMPERATURE = 500.0  # heuristic units, about two empty cells: spread of logp


def _build_heuristic_table() -> np.ndarray:
    """Heuristic value of each 16-bit row, float64 ``(65536,)`` (symmetric under reversal)."""
    rows = np.arange(1 << 16)
    line = ((rows[:, None] >> np.array([12, 8, 4, 0])) & 15).astype(np.float64)  # (65536, 4)
    empty = (line == 0).sum(axis=1)
    # merges: runs of equal non-empty tiles, empties skipped; a run of k tiles counts k
    merges = np.zeros(rows.size)
    counter = np.zeros(rows.size)
    prev = np.zeros(rows.size)
    for i in range(4):
        rank = line[:, i]
        same = (rank != 0) & (rank == prev)
        ended = (rank != 0) & ~same & (counter > 0)
        merges += np.where(ended, 1 + counter, 0)
        counter = np.where(same, counter + 1, np.where(rank != 0, 0, counter))
        prev = np.where(rank != 0, rank, prev)
    merges += np.where(counter > 0, 1 + counter, 0)
    powered = line**MONOTONICITY_POWER
    step = np.diff(powered, axis=1)  # (65536, 3)
    mono_left = np.where(step < 0, -step, 0).sum(axis=1)
    mono_right = np.where(step >= 0, step, 0).sum(axis=1)
    return (
        LOST_PENALTY
        + EMPTY_WEIGHT * empty
        + MERGES_WEIGHT * merges
        - MONOTONICITY_WEIGHT * np.minimum(mono_left, mono_right)
        - SUM_WEIGHT * (line**SUM_POWER).sum(axis=1)
    )


# float32: half the cache footprint of float64 (lookups ~35% faster); sums are float64
_ROW_HEURISTIC = _build_heuristic_table().astype(np.float32)


def _sum_rows(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    values = np.take(table, rows)  # (N, 4)
    total = values[:, 0].astype(np.float64)
    total += values[:, 1]
    total += values[:, 2]
    total += values[:, 3]
    return total


def heuristic(boards: np.ndarray) -> np.ndarray:
    """Heuristic value of each board (rows plus columns), float64 ``(N,)``.

    It does not look at legality: the search values a dead board 0 itself.
    """
    b = engine.as_boards(boards)
    value = _sum_rows(_ROW_HEURISTIC, engine.row_view(b))
    value += _sum_rows(_ROW_HEURISTIC, engine.row_view(engine.transpose(b)))
    return value


# --------------------------------------------------------------------------- search

_LEAF_BUDGET = 1 << 21  # leaf boards per search block: ~100 MB of temporaries


def _search(boards: np.ndarray, depth: int) -> np.ndarray:
    """Expectimax values of the four moves, float64 ``(N, 4)``, ``-inf`` where illegal."""
    kids, rewards = engine.move_all(boards)  # (N, 4)
    legal = kids != boards[:, None]
    values = np.full(kids.shape, -np.inf)
    if depth == 1:  # leaves: evaluate all four kids densely, cheaper than gathering
        leaf = heuristic(kids.ravel()).reshape(kids.shape)  # (N, 4)
        return np.where(legal, rewards + leaf, values)
    values[legal] = rewards[legal] + _chance(kids[legal], depth - 1)
    return values


def _chance(boards: np.ndarray, depth: int) -> np.ndarray:
    """Expected value over the spawns of each board, then ``depth`` more moves, ``(M,)``."""
    empty = unpack(boards) == 0  # (M, 16)
    board_of, cell = np.nonzero(empty)  # one entry per (board, empty cell)
    n_empty = empty.sum(axis=1)[board_of]
    shifts = SHIFTS[cell]
    kids = np.concatenate(
        [boards[board_of] | (np.uint64(1) << shifts), boards[board_of] | (np.uint64(2) << shifts)]
    )
    best = _search(kids, depth).max(axis=1)
    best[np.isneginf(best)] = 0.0  # a dead board: no more rewards, heuristic 0
    two, four = np.split(best, 2)
    weighted = ((1 - engine.FOUR_PROB) * two + engine.FOUR_PROB * four) / n_empty
    return np.bincount(board_of, weights=weighted, minlength=boards.shape[0])


def _leaves_per_board(depth: int) -> int:
    return 4 * (4 * 30) ** (depth - 1)  # 4 moves, then up to 15 cells x 2 tiles x 4 moves


# --------------------------------------------------------------------------- players


@dataclass(frozen=True)
class Player:
    """A move chooser.

    Args:
        name: registry name.
        depth: search depth in moves; 0 = no search (uniform over legal moves).
        temperature: of the softmax over move values that defines the policy (``logp``).
    """

    name: str
    depth: int
    temperature: float = 1.0

    def choose(
        self, boards: np.ndarray, legal: np.ndarray, u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Pick a move per board.

        Args:
            boards: uint64 ``(N,)`` packed boards, each with at least one legal move.
            legal: uint8 ``(N,)`` legal masks (:func:`vh.extract.engine.legal_mask`).
            u: floats in [0, 1) ``(N,)``; only the random player uses them.

        Returns:
            ``(dirs uint8 (N,), values float64 (N, 4) or None)``: values ``-inf`` where
            illegal; ``None`` for a player without move values (random: see
            :func:`legal_values`).
        """
        b = engine.as_boards(boards)
        if self.depth == 0:
            return _random_choice(np.asarray(legal), np.asarray(u)), None
        block = max(1, _LEAF_BUDGET // _leaves_per_board(self.depth))
        values = np.concatenate(
            [_search(b[i : i + block], self.depth) for i in range(0, b.shape[0], block)]
            or [np.zeros((0, 4))]
        )
        return np.argmax(values, axis=1).astype(np.uint8), values

    def logp(self, values: np.ndarray) -> np.ndarray:
        """Log-probabilities of the player's policy, float32 ``(N, 4)``, ``-inf`` where illegal."""
        z = np.asarray(values, dtype=np.float64) / self.temperature
        top = z.max(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))
        return np.where(np.isneginf(z), -np.inf, out).astype(np.float32)


def _random_choice(legal: np.ndarray, u: np.ndarray) -> np.ndarray:
    k = (u * engine.POPCOUNT4[legal]).astype(np.int64)  # which of the legal moves
    return engine.KTH_BIT4[legal.astype(np.int64) * 4 + k]


def legal_values(legal: np.ndarray) -> np.ndarray:
    """Move values of a player without any: 0 where legal, ``-inf`` where not, ``(N, 4)``."""
    bits = (np.asarray(legal)[:, None] >> np.arange(4, dtype=np.uint8)) & 1  # (N, 4)
    return np.where(bits == 1, 0.0, -np.inf)


PLAYERS: dict[str, Callable[[int], Player]] = {
    "random": lambda depth: Player("random", 0),
    "greedy": lambda depth: Player("greedy", 1, SEARCH_TEMPERATURE),
    "expectimax": lambda depth: Player("expectimax", depth, SEARCH_TEMPERATURE),
}


def make_player(name: str, depth: int = 2) -> Player:
    """The player registered as ``name``; ``depth`` is used by expectimax only.

    Raises:
        VhError: unknown name (the message lists the valid ones) or depth below 1.
    """
    if name not in PLAYERS:
        raise VhError(
            f"unknown player {name!r} (valid: {', '.join(sorted(PLAYERS))})", field="synth.player"
        )
    if depth < 1:
        raise VhError(f"search depth must be at least 1, got {depth}", field="synth.depth")
    return PLAYERS[name](depth)
