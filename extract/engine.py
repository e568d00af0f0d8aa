"""The 2048 engine on packed boards, vectorised over many games with numpy.

A board is a uint64 with MSB-first nibbles (cell i in bits ``63-4i .. 60-4i``, see
:mod:`vh.extract.board`). Board row r is the 16 bits ``63-16r .. 48-16r``; in a little-endian
``uint16`` view of a board the four words are the board rows bottom-up (word j = row 3-j).
Inside a 16-bit row the high nibble is the leftmost cell.

Moves are lookups in 65536-entry row tables (LEFT and RIGHT: the moved row and the score of
its merges); UP and DOWN slide the rows of the transposed board. Rules as the original game:
tiles slide, each tile merges at most once per move, and merging two ``2**e`` scores
``2**(e+1)``. A move is legal iff it changes the board.

The 65536 tile: a packed board holds exponents 0..15 only (its ``tile_65536_mask`` lives
outside the 64 bits). The packed-board functions (:func:`move`, :func:`move_all`) therefore
raise :class:`~vh.errors.VhError` when a move would merge two 32768 tiles; :func:`legal_mask`
and :func:`is_over` are exact for such boards. Boards that hold a 65536 tile go through
:func:`move_exps`, which works on decoded exponents 0..16 (a 16+16 merge, 131072, raises).

Directions are UDLR: 0 up, 1 down, 2 left, 3 right; legal masks have bit d set when
direction d is legal (the ``ev_legal`` bit order).

Axes: N = boards, 4 = directions (UDLR) or the four 16-bit rows of a board, 16 = cells.
"""

from __future__ import annotations

import numpy as np

from vh.errors import VhError
from vh.extract.board import N_CELLS
from vh.extract.formats import DOWN, LEFT, RIGHT, UP

FOUR_PROB = 0.1  # a spawned tile is a 4 with this probability, else a 2
_B17 = 17  # line codes in base 17 cover exponents 0..16 (16 = the 65536 tile)

# --------------------------------------------------------------------------- tables


def _slide_lines(lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slide lines of 4 exponents toward their first cell, merging each tile at most once.

    Args:
        lines: integer ``(M, 4)`` exponents, cell 0 is the side the tiles move to.

    Returns:
        ``(moved uint8 (M, 4), reward int64 (M,))``; a merge of two ``e`` makes ``e + 1`` and
        scores ``2**(e+1)``.
    """
    m = lines.shape[0]
    # compact the non-empty cells to the front, keeping their order; pad so reads never overrun
    order = np.argsort(lines == 0, axis=1, kind="stable")
    packed = np.zeros((m, 8), dtype=np.int64)
    packed[:, :4] = np.take_along_axis(lines, order, axis=1)
    moved = np.zeros((m, 4), dtype=np.uint8)
    reward = np.zeros(m, dtype=np.int64)
    read = np.zeros(m, dtype=np.int64)
    rows = np.arange(m)
    for w in range(4):
        a, b = packed[rows, read], packed[rows, read + 1]
        merge = (a != 0) & (a == b)
        moved[:, w] = np.where(merge, a + 1, a)
        reward += np.where(merge, np.left_shift(1, a + 1), 0)
        read += np.where(merge, 2, 1)
    return moved, reward


def _line_codes(cells: np.ndarray) -> np.ndarray:
    """Base-17 code of lines of 4 exponents, ``(..., 4) -> (...)`` int32, cell 0 most significant."""
    c = cells.astype(np.int32)
    return ((c[..., 0] * _B17 + c[..., 1]) * _B17 + c[..., 2]) * _B17 + c[..., 3]


def _build_line_tables() -> tuple[np.ndarray, np.ndarray]:
    """Slide every line of exponents 0..16: moved cells ``(17**4, 4)`` and rewards ``(17**4,)``."""
    codes = np.arange(_B17**4)
    lines = codes[:, None] // (_B17 ** np.arange(3, -1, -1)) % _B17  # (17**4, 4), cell 0 first
    return _slide_lines(lines)


_LINE_MOVED, _LINE_REWARD = _build_line_tables()  # a moved cell of 17 marks a 16+16 merge


def _build_row_tables() -> dict[str, np.ndarray]:
    """The 65536-row tables of the packed engine, derived from the line tables."""
    rows = np.arange(1 << 16, dtype=np.int64)
    cells = (rows[:, None] >> np.array([12, 8, 4, 0])) & 15  # (65536, 4), leftmost cell first
    weights = np.array([12, 8, 4, 0])
    moved, reward, legal = [], [], np.zeros(1 << 16, dtype=np.uint8)
    for side, bit in ((cells, LEFT), (cells[:, ::-1], RIGHT)):  # RIGHT slides toward cell 3
        out = _LINE_MOVED[_line_codes(side)]
        out = out if bit == LEFT else out[:, ::-1]
        overflow = (out > 15).any(axis=1)  # a 32768+32768 merge: the 65536 needs the mask
        row = (np.minimum(out, 15).astype(np.int64) << weights).sum(axis=1)
        moved.append(row.astype(np.uint16))
        reward.append(np.where(overflow, -1, _LINE_REWARD[_line_codes(side)]).astype(np.int32))
        legal |= np.where(row != rows, 1 << bit, 0).astype(np.uint8)
    # spawning: k-th set bit of a 16-bit mask of empty cells (bit c = nibble c from the LSB)
    bits = ((rows[:, None] >> np.arange(16)) & 1).astype(bool)  # (65536, 16)
    kth = np.zeros((1 << 16, 16), dtype=np.uint8)
    for c in range(16):
        rank = bits[:, :c].sum(axis=1)
        kth[bits[:, c], rank[bits[:, c]]] = c
    return {
        "moved": np.concatenate(moved),  # (131072,) u16: [LEFT rows, RIGHT rows]
        "reward": np.concatenate(reward),  # (131072,) i32, -1 = overflow into 65536
        "legal_lr": legal,  # bits LEFT/RIGHT of a row
        "legal_ud": legal >> 2,  # the same bits for a row of the transposed board: UP/DOWN
        "popcount": bits.sum(axis=1).astype(np.uint8),  # (65536,)
        "kth_bit": kth.ravel(),  # (65536 * 16,)
    }


_T = _build_row_tables()
_HALF = 1 << 16  # offset of the RIGHT half in the move tables
# random choice among legal moves: popcount of a 4-bit mask, and its k-th set bit
POPCOUNT4 = np.array([bin(m).count("1") for m in range(16)], dtype=np.uint8)
KTH_BIT4 = np.array(
    [[([d for d in range(4) if m >> d & 1] + [0] * 4)[k] for k in range(4)] for m in range(16)],
    dtype=np.uint8,
).ravel()  # (16 * 4,)

# --------------------------------------------------------------------------- board views


def as_boards(boards: np.ndarray) -> np.ndarray:
    """Boards as a contiguous native uint64 ``(N,)`` array (views rely on it)."""
    b = np.ascontiguousarray(boards, dtype=np.uint64)
    if b.ndim != 1:
        raise VhError(f"expected a 1-D array of packed boards, got shape {b.shape}", field="board")
    return b


def row_view(boards: np.ndarray) -> np.ndarray:
    """The four 16-bit rows of each board, uint16 ``(N, 4)``: column j = board row 3-j."""
    return boards.view(np.uint16).reshape(-1, 4)


_M1 = np.uint64(0xF0F00F0FF0F00F0F)
_M2 = np.uint64(0x0000F0F00000F0F0)
_M3 = np.uint64(0x0F0F00000F0F0000)
_M4 = np.uint64(0xFF00FF0000FF00FF)
_M5 = np.uint64(0x00FF00FF00000000)
_M6 = np.uint64(0x00000000FF00FF00)
_S12, _S24 = np.uint64(12), np.uint64(24)


def transpose(boards: np.ndarray) -> np.ndarray:
    """Transpose packed boards (cell (r, c) <-> (c, r)) with bit tricks, uint64 ``(N,)``.

    Swaps the off-diagonal nibbles of each 2x2 block, then the off-diagonal 2x2 blocks. The
    masks are symmetric under the MSB-first cell order, so the classic LSB-first trick applies.
    """
    b = np.asarray(boards, dtype=np.uint64)
    a = b & _M1
    a |= (b & _M2) << _S12
    a |= (b & _M3) >> _S12
    out = a & _M4
    out |= (a & _M5) >> _S24
    out |= (a & _M6) << _S24
    return out


# --------------------------------------------------------------------------- moves


def _check_dirs(dirs: np.ndarray, n: int) -> np.ndarray:
    d = np.asarray(dirs)
    if d.shape != (n,):
        raise VhError(f"expected {n} directions, got shape {d.shape}", field="move_dir")
    if n and int(d.max()) > 3:
        raise VhError(f"direction {int(d.max())} is not one of 0..3 (UDLR)", field="move_dir")
    return d.astype(np.uint8, copy=False)


def _slide_rows(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Look rows up in the move tables: ``index`` ``(N, 4)`` into [LEFT | RIGHT] halves.

    Returns:
        ``(moved boards uint64 (N,), reward int64 (N,))``.
    """
    moved = np.take(_T["moved"], index)  # (N, 4) u16, the same word order as the input rows
    rewards = np.take(_T["reward"], index)
    if rewards.size and rewards.min() < 0:
        raise VhError(
            "a move merges two 32768 tiles into 65536, which a packed board cannot "
            "hold without its mask; use extract.engine.move_exps",
            field="board",
        )
    # four explicit adds: numpy reductions along a length-4 axis are ~7x slower
    total = rewards[:, 0].astype(np.int64)
    total += rewards[:, 1]
    total += rewards[:, 2]
    total += rewards[:, 3]
    return moved.view(np.uint64).ravel(), total


def move(boards: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply one move to each board.

    Args:
        boards: uint64 ``(N,)`` packed boards (exponents 0..15).
        dirs: integer ``(N,)`` directions, 0 up, 1 down, 2 left, 3 right.

    Returns:
        ``(new_boards uint64 (N,), rewards int64 (N,))``; an illegal move returns the board
        unchanged with reward 0.

    Raises:
        VhError: a move would merge two 32768 tiles (see the module docstring).
    """
    b = as_boards(boards)
    d = _check_dirs(dirs, b.shape[0])
    vertical = d < 2  # up/down slide the rows of the transposed board
    src = np.where(vertical, transpose(b), b)
    index = row_view(src).astype(np.int32)
    index |= ((d & 1).astype(np.int32) << 16)[:, None]  # down/right use the RIGHT half
    moved, rewards = _slide_rows(index)
    return np.where(vertical, transpose(moved), moved), rewards


def move_all(boards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply each of the four moves to each board.

    Args:
        boards: uint64 ``(N,)`` packed boards.

    Returns:
        ``(new_boards uint64 (N, 4), rewards int64 (N, 4))``, columns in UDLR order.
    """
    b = as_boards(boards)
    rows, trows = row_view(b), row_view(transpose(b))
    out = np.empty((b.shape[0], 4), dtype=np.uint64)
    rewards = np.empty((b.shape[0], 4), dtype=np.int64)
    for d, src, half in (
        (UP, trows, 0),
        (DOWN, trows, _HALF),
        (LEFT, rows, 0),
        (RIGHT, rows, _HALF),
    ):
        index = src.astype(np.int32) + half if half else src
        moved, rewards[:, d] = _slide_rows(index)
        out[:, d] = transpose(moved) if d in (UP, DOWN) else moved
    return out, rewards


def legal_mask(boards: np.ndarray) -> np.ndarray:
    """Legal moves of each board as a uint8 ``(N,)`` bitmask (bit d = direction d is legal)."""
    b = as_boards(boards)
    bits = np.take(_T["legal_lr"], row_view(b))  # (N, 4) u8: LEFT/RIGHT bits of each row
    bits |= np.take(_T["legal_ud"], row_view(transpose(b)))  # UP/DOWN bits of each column
    word = bits.view(np.uint32).ravel()  # OR the 4 bytes of each board together
    word |= word >> np.uint32(16)
    word |= word >> np.uint32(8)
    return (word & np.uint32(15)).astype(np.uint8)


def is_over(boards: np.ndarray) -> np.ndarray:
    """True where no move is legal, bool ``(N,)``."""
    return legal_mask(boards) == 0


# --------------------------------------------------------------------------- spawning


def place_tiles(boards: np.ndarray, u_cell: np.ndarray, u_four: np.ndarray) -> np.ndarray:
    """Put one new tile on each board at an empty cell chosen by given uniforms.

    Args:
        boards: uint64 ``(N,)`` packed boards.
        u_cell: floats in [0, 1) ``(N,)``: the new tile goes to empty cell
            ``floor(u_cell * n_empty)`` (empty cells enumerated in a fixed order).
        u_four: floats in [0, 1) ``(N,)``: the tile is a 4 where ``u_four < FOUR_PROB``.

    Returns:
        uint64 ``(N,)``; a board without an empty cell is returned unchanged.
    """
    b = as_boards(boards)
    mask = _empty_cells(b)
    count = _T["popcount"][mask]
    k = (np.asarray(u_cell) * count).astype(np.int64)  # index among the empty cells
    cell = _T["kth_bit"][mask.astype(np.int64) * 16 + k].astype(np.uint64)  # nibble from LSB
    tile = np.where(np.asarray(u_four) < FOUR_PROB, 2, 1).astype(np.uint64)
    return np.where(count > 0, b | (tile << (cell << np.uint64(2))), b)


_NIB_LOW = np.uint64(0x1111111111111111)
_COMPRESS = [
    (np.uint64(s), np.uint64(m))
    for s, m in (
        (3, 0x0303030303030303),
        (6, 0x000F000F000F000F),
        (12, 0x000000FF000000FF),
        (24, 0xFFFF),
    )
]


def _empty_cells(boards: np.ndarray) -> np.ndarray:
    """16-bit mask of the empty cells of each board (bit c = nibble c from the LSB), int64."""
    x = boards | (boards >> np.uint64(1))
    x |= x >> np.uint64(2)
    z = ~x & _NIB_LOW  # bit 4c set where nibble c is 0
    for shift, keep in _COMPRESS:  # gather the 16 flags into the low 16 bits, halving strides
        z |= z >> shift
        z &= keep
    return z.astype(np.int64)


def spawn(boards: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Spawn one tile per board (a 2 with p=0.9, a 4 with p=0.1, uniform over empty cells).

    Args:
        boards: uint64 ``(N,)`` packed boards.
        rng: numpy Generator the draws come from.

    Returns:
        uint64 ``(N,)``; boards without an empty cell are returned unchanged.
    """
    b = as_boards(boards)
    u = rng.random((2, b.shape[0]))
    return place_tiles(b, u[0], u[1])


def new_games(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` fresh boards with two spawned tiles each, uint64 ``(n,)``."""
    boards = np.zeros(n, dtype=np.uint64)
    return spawn(spawn(boards, rng), rng)


# --------------------------------------------------------------------------- exponent engine

# cells of the four lines of each direction, each line listed from the side tiles move to
_LINE_CELLS = np.array(
    [
        [c + 4 * r for c in range(4) for r in range(4)],  # up: columns, top first
        [c + 4 * r for c in range(4) for r in range(3, -1, -1)],  # down: columns, bottom first
        list(range(16)),  # left: rows, left first
        [4 * r + c for r in range(4) for c in range(3, -1, -1)],  # right: rows, right first
    ]
)  # (4 dirs, 16)


def move_exps(exps: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply one move to each board given as exponents; handles the 65536 tile (exponent 16).

    Args:
        exps: integer ``(N, 16)`` exponents 0..16, row-major, cell 0 top-left.
        dirs: integer ``(N,)`` directions UDLR.

    Returns:
        ``(new_exps uint8 (N, 16), rewards int64 (N,))``.

    Raises:
        VhError: bad shapes or values, or a 65536+65536 merge (131072 is out of range).
    """
    e = np.asarray(exps)
    if e.ndim != 2 or e.shape[1] != N_CELLS:
        raise VhError(f"expected (N, 16) exponents, got shape {e.shape}", field="exps")
    if e.size and (int(e.min()) < 0 or int(e.max()) > 16):
        raise VhError("tile exponents must lie in 0..16", field="exps")
    d = _check_dirs(dirs, e.shape[0])
    out = np.empty(e.shape, dtype=np.uint8)
    rewards = np.zeros(e.shape[0], dtype=np.int64)
    for direction in range(4):
        sel = np.flatnonzero(d == direction)
        cells = _LINE_CELLS[direction]
        codes = _line_codes(e[sel][:, cells].reshape(-1, 4, 4))  # (M, 4 lines)
        rewards[sel] = _LINE_REWARD[codes].sum(axis=1)
        moved = np.empty((sel.size, N_CELLS), dtype=np.uint8)
        moved[:, cells] = _LINE_MOVED[codes].reshape(-1, N_CELLS)
        out[sel] = moved
    if out.size and int(out.max()) > 16:
        raise VhError("a move merges two 65536 tiles (131072 is out of range)", field="exps")
    return out, rewards
