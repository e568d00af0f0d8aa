"""The 2048 board codec.

A board is 16 tile exponents (0 = empty, e = tile 2**e), row-major, cell 0 top-left.
Packed as a 64-bit integer with MSB-first nibbles: cell i sits in bits ``63-4i .. 60-4i``.
A 65536 tile (exponent 16) does not fit a nibble: it is stored as nibble 15 with bit i of a
16-bit ``tile_65536_mask`` set. Tokens fed to the trunk are the exponents themselves
(vocab 16 covers exponents 0..15, vocab 17 adds 16).

Axes: N = boards, 16 = cells (row-major 4x4).
"""

from __future__ import annotations

import numpy as np

N_CELLS = 16
MAX_EXP = 16  # 65536
SHIFTS = np.array([60 - 4 * i for i in range(N_CELLS)], dtype=np.uint64)

# byte -> (high nibble, low nibble) as two uint8 in memory order; decoding is one gather per byte
_BYTE_TO_NIBBLES = np.stack([np.arange(256) >> 4, np.arange(256) & 15], axis=1).astype(np.uint8)


def unpack(
    boards: np.ndarray, mask: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Decode packed boards into exponents.

    Args:
        boards: uint64 ``(N,)`` packed boards.
        mask: optional uint16 ``(N,)`` tile_65536_mask; where bit i is set, cell i is 16.
        out: optional preallocated uint8 ``(N, 16)``.

    Returns:
        uint8 ``(N, 16)`` exponents.
    """
    b = np.ascontiguousarray(boards, dtype="<u8")
    n = b.shape[0]
    big_endian_bytes = b.view(np.uint8).reshape(n, 8)[:, ::-1]  # (N, 8), byte 0 = cells 0,1
    if out is None:
        out = np.empty((n, N_CELLS), dtype=np.uint8)
    np.take(_BYTE_TO_NIBBLES, big_endian_bytes, axis=0, out=out.reshape(n, 8, 2))
    if mask is not None:
        m = np.asarray(mask)
        rows = np.flatnonzero(m)
        if rows.size:
            bits = (m[rows, None].astype(np.uint32) >> np.arange(N_CELLS, dtype=np.uint32)) & 1
            r, c = np.nonzero(bits)
            out[rows[r], c] = MAX_EXP
    return out


def pack(exps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode exponents into packed boards and the 65536 mask.

    Args:
        exps: integer ``(N, 16)`` exponents in 0..16.

    Returns:
        ``(boards uint64 (N,), mask uint16 (N,))``.
    """
    e = np.asarray(exps)
    if e.ndim != 2 or e.shape[1] != N_CELLS:
        raise ValueError(f"expected (N, 16) exponents, got {e.shape}")
    if e.size and (e.min() < 0 or e.max() > MAX_EXP):
        raise ValueError("exponents must lie in 0..16")
    big = e == MAX_EXP
    nib = np.where(big, 15, e).astype(np.uint64)
    boards = np.bitwise_or.reduce(nib << SHIFTS, axis=1).astype(np.uint64)
    weights = (1 << np.arange(N_CELLS)).astype(np.uint32)
    mask = (big.astype(np.uint32) * weights).sum(axis=1).astype(np.uint16)
    return boards, mask


def vocab_needed(exps: np.ndarray) -> int:
    """Smallest trunk vocab that embeds these exponents (16, or 17 when a 65536 tile occurs)."""
    return 17 if np.asarray(exps).size and int(np.max(exps)) >= MAX_EXP else 16


def to_tokens(exps: np.ndarray, vocab: int = 16) -> np.ndarray:
    """Token ids for the trunk: the exponents, checked against ``vocab``.

    Raises:
        ValueError: an exponent does not fit the vocab.
    """
    e = np.asarray(exps)
    if e.size and int(e.max()) >= vocab:
        raise ValueError(f"tile exponent {int(e.max())} is outside the trunk's vocab of {vocab}")
    return e.astype(np.int64)


def max_exponent(exps: np.ndarray) -> np.ndarray:
    """Largest exponent on each board, uint8 ``(N,)``."""
    return np.asarray(exps).max(axis=1).astype(np.uint8)


# score implied by a tile built from 2s only: a tile 2**e took (e-1) * 2**e points of merges
_TILE_SCORE = np.array([0, 0] + [(e - 1) * (1 << e) for e in range(2, MAX_EXP + 1)], dtype=np.int64)


def board_score(exps: np.ndarray) -> np.ndarray:
    """Score implied by the board's tiles (as if every spawn were a 2), int64 ``(N,)``.

    This is the usual 2048 estimate: building a 2**e tile from 2s scores (e-1)*2**e.
    """
    return _TILE_SCORE[np.asarray(exps)].sum(axis=1)
