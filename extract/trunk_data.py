"""The rows ``vh trunk train`` learns from: boards, recorded moves, legal moves, by split.

Legality comes from the decoded boards through the engine (:func:`legal_moves`), not from a
dataset's ``ev_legal`` column: only the packed layouts carry it, and it is the one field whose
mistakes would silently change the loss. A row whose recorded move the engine calls illegal
is dropped and counted.

Also the chance levels the record reports (:func:`baselines`) and the tile counts of the
auxiliary objective (:func:`tile_counts`, :class:`CountsScale`).

Axes: N = rows, 16 = cells / tokens, 4 = moves (UDLR), V = token vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vh.errors import VhError
from vh.extract import engine
from vh.extract.board import MAX_EXP, pack


@dataclass(frozen=True)
class Moves:
    """The rows of one split: boards, the move recorded and the legal moves.

    Attributes:
        tokens: uint8 ``(N, 16)`` tile exponents (the trunk's tokens).
        move: int64 ``(N,)`` the recorded move, UDLR.
        legal: bool ``(N, 4)`` legal moves by the engine; ``legal[i, move[i]]`` always holds.
    """

    tokens: np.ndarray
    move: np.ndarray
    legal: np.ndarray

    def __len__(self) -> int:
        return int(self.move.shape[0])


def legal_moves(exps: np.ndarray) -> np.ndarray:
    """Legal moves of each board by the engine, bool ``(N, 4)`` in UDLR order.

    Boards of exponents 0..15 go through the packed-board tables; the rare boards holding a
    65536 tile (exponent 16, which a packed board cannot hold) move as exponents, one by one.
    """
    e = np.asarray(exps, np.uint8)
    out = np.zeros((e.shape[0], 4), bool)
    small = e.max(axis=1, initial=0) < MAX_EXP
    bits = engine.legal_mask(pack(e[small])[0])
    out[small] = ((bits[:, None] >> np.arange(4, dtype=np.uint8)) & 1).astype(bool)
    for i in np.flatnonzero(~small):
        for d in range(4):
            try:
                moved, _ = engine.move_exps(e[i : i + 1], np.array([d]))
                out[i, d] = bool(np.any(moved != e[i]))
            except VhError:  # two 65536 tiles would merge: the move changes the board
                out[i, d] = True
    return out


def read_moves(ds, row_split: np.ndarray, codes: tuple[int, ...]) -> tuple[dict, int]:
    """The rows of the splits ``codes`` from the dataset, with their legal moves.

    Args:
        ds: an opened, validated :class:`~vh.extract.dataset.Dataset`.
        row_split: u8 split code of each run of ``ds.runs`` (in its order).
        codes: which split codes to keep.

    Returns:
        ``({code: Moves}, rows dropped because the recorded move is illegal)``.
    """
    parts: dict[int, list] = {c: [] for c in codes}
    dropped = 0
    for chunk in ds.iter_chunks():
        pos, _ = ds.runs.positions(chunk.run_id)  # validated: every run id is known
        code = row_split[pos]
        for c in codes:
            sel = np.flatnonzero(code == c)
            exps, move = chunk.exps[sel], chunk.move[sel].astype(np.int64)
            legal = legal_moves(exps)
            ok = legal[np.arange(sel.size), move]
            dropped += int(np.sum(~ok))
            parts[c].append((exps[ok], move[ok], legal[ok]))
    out = {}
    for c, p in parts.items():
        if not p:
            p = [(np.zeros((0, 16), np.uint8), np.zeros(0, np.int64), np.zeros((0, 4), bool))]
        out[c] = Moves(*(np.concatenate(a) for a in zip(*p, strict=True)))
    return out, dropped


def cap_rows(data: Moves, max_rows: int, seed: int) -> Moves:
    """At most ``max_rows`` rows of ``data`` (0: all): a seeded random subset, in row order.

    The subset draws from its own stream (``seed`` and a fixed tag), so the epochs' shuffle
    stream is the same with and without a cap.
    """
    if max_rows <= 0 or len(data) <= max_rows:
        return data
    keep = np.sort(np.random.default_rng((seed, 0x726F7773)).choice(len(data), max_rows, False))
    return Moves(data.tokens[keep], data.move[keep], data.legal[keep])


def baselines(train: Moves, val: Moves) -> dict[str, float]:
    """Chance levels on ``val``: always the train split's most common move (when legal,
    else a uniform legal move), and a uniform choice among the legal moves."""
    if not len(val):
        return {"majority_move": float("nan"), "uniform_legal": float("nan")}
    major = int(np.bincount(train.move, minlength=4).argmax()) if len(train) else 0
    n_legal = val.legal.sum(axis=1)
    hit = np.where(val.legal[:, major], val.move == major, 1.0 / n_legal)
    return {
        "majority_move": float(np.mean(hit)),
        "majority_move_is": "UDLR"[major],
        "uniform_legal": float(np.mean(1.0 / n_legal)),
    }


# --------------------------------------------------------------------------- tile counts


def tile_counts(tokens: np.ndarray, vocab: int) -> np.ndarray:
    """How many cells hold each token value, float32 ``(N, V)`` (column 0: empty cells)."""
    t = np.asarray(tokens, np.int64)
    n = t.shape[0]
    flat = (np.arange(n, dtype=np.int64)[:, None] * vocab + t).ravel()  # (row, value) -> bin
    return np.bincount(flat, minlength=n * vocab).reshape(n, vocab).astype(np.float32)


@dataclass(frozen=True)
class CountsScale:
    """Standardisation of the tile counts by the TRAINING rows' mean and spread per token
    value, so every value weighs alike in the auxiliary loss. A value the training rows never
    hold has spread 0; :data:`MIN_SPREAD` keeps its column finite and near zero."""

    mean: np.ndarray  # float32 (V,)
    std: np.ndarray  # float32 (V,)

    @classmethod
    def of(cls, tokens: np.ndarray, vocab: int, block: int = 1 << 18) -> CountsScale:
        """From the training rows' tokens, ``block`` rows at a time (float64 sums: memory is
        one block's counts however many rows there are)."""
        n = len(tokens)
        s1, s2 = np.zeros(vocab), np.zeros(vocab)
        for a in range(0, n, block):
            c = tile_counts(tokens[a : a + block], vocab).astype(np.float64)
            s1 += c.sum(axis=0)
            s2 += np.square(c).sum(axis=0)
        mean = s1 / max(n, 1)
        std = np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 0.0))
        return cls(mean.astype(np.float32), np.maximum(std, MIN_SPREAD).astype(np.float32))

    def __call__(self, tokens: np.ndarray, vocab: int) -> np.ndarray:
        """The standardised counts of ``tokens``, float32 ``(N, V)``."""
        return (tile_counts(tokens, vocab) - self.mean) / self.std


MIN_SPREAD = 0.1  # counts are integers: a spread below 0.1 means the value (almost) never occurs
