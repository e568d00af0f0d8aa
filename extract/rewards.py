"""Per-step rewards and returns of a dataset, with numpy only.

- :func:`replay_rewards`: the merge reward of each recorded move, by replaying it on the
  decoded board (each merge scores the new tile's value). Handles the 65536 tile.
- :func:`discounted_returns`: ``G_t = r_t + gamma * G_{t+1}`` inside each run.
- :func:`step_fraction`: how far into its run a state is.

Axes: N = rows (states), 16 = cells.
"""

from __future__ import annotations

import numpy as np

from vh.errors import VhError
from vh.extract.engine import move_exps

_REPLAY_CHUNK = 1 << 20  # rows per replay batch: ~100 MB of temporaries
_SCAN_BLOCK = 8  # rows per block of the return scan (see _reverse_scan)


def replay_rewards(exps: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """Merge reward of applying each recorded move to each board.

    Args:
        exps: integer ``(N, 16)`` exponents 0..16 (16 = the 65536 tile).
        moves: integer ``(N,)`` directions UDLR.

    Returns:
        int64 ``(N,)`` rewards (0 for an illegal move).

    Raises:
        VhError: wrong shapes, exponents outside 0..16, a direction outside 0..3, or a merge of
            two 65536 tiles.
    """
    e, m = np.asarray(exps), np.asarray(moves)
    if e.ndim != 2 or e.shape[1] != 16:
        raise VhError(f"expected (N, 16) exponents, got shape {e.shape}", field="exps")
    if m.shape != (e.shape[0],):
        raise VhError(f"expected {e.shape[0]} moves, got shape {m.shape}", field="move_dir")
    out = np.empty(e.shape[0], dtype=np.int64)
    for i in range(0, e.shape[0], _REPLAY_CHUNK):
        out[i : i + _REPLAY_CHUNK] = move_exps(e[i : i + _REPLAY_CHUNK], m[i : i + _REPLAY_CHUNK])[
            1
        ]
    return out


# --------------------------------------------------------------------------- returns


def discounted_returns(rewards: np.ndarray, run_ids: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted returns ``G_t = r_t + gamma * G_{t+1}`` per run (``G = r`` at a run's end).

    Args:
        rewards: ``(N,)`` rewards.
        run_ids: ``(N,)`` run id of each row; the rows of a run are contiguous and in step
            order (a run id that reappears later starts a new run).
        gamma: discount in [0, 1].

    Returns:
        float64 ``(N,)``.
    """
    r = np.asarray(rewards)
    ids = np.asarray(run_ids)
    if ids.shape != r.shape or r.ndim != 1:
        raise VhError(
            f"rewards {r.shape} and run ids {ids.shape} must be equal 1-D shapes", field="run_id"
        )
    if not 0.0 <= gamma <= 1.0:
        raise VhError(f"gamma must lie in [0, 1], got {gamma}", field="gamma")
    if not np.isfinite(r).all():  # one NaN would spread to every earlier return of its run
        i = int(np.flatnonzero(~np.isfinite(r))[0])
        raise VhError(f"row {i}: reward {r[i]} is not finite", field="reward")
    last_rows = np.r_[np.flatnonzero(ids[1:] != ids[:-1]), r.size - 1]  # each run's last row
    return _reverse_scan(r.astype(np.float64), last_rows, gamma) if r.size else r * 0.0


def _reverse_scan(x: np.ndarray, last_rows: np.ndarray, gamma: float) -> np.ndarray:
    """``y_t = x_t + gamma * y_{t+1}``, except ``y_t = x_t`` at the sorted ``last_rows``.

    Blocked so that Python loops stay short whatever the run lengths: ``x`` is viewed as
    ``(m, B)`` blocks of ``B`` consecutive rows and scanned inside every block at once, one
    column at a time from the right (resetting at the runs' last rows); then the block starts
    are scanned across blocks with discount ``gamma**B`` (the same problem, ``B`` times
    smaller: recursion), and each row adds the discounted value of the next block's start
    unless a run ends between it and its block's end. ``B = 8`` keeps every column pass a
    constant-stride stream over whole cache lines (measured faster than wider blocks, which
    need transposes).
    """
    b = _SCAN_BLOCK
    m = -(-x.size // b)
    z = np.zeros((m, b))  # (blocks, offset in block)
    z.ravel()[: x.size] = x
    col, blk = last_rows % b, last_rows // b
    reset, by_col = x[last_rows], np.argsort(col, kind="stable")
    bounds = np.searchsorted(col[by_col], np.arange(b + 1))
    for j in range(b - 2, -1, -1):
        z[:, j] += gamma * z[:, j + 1]
        sel = by_col[bounds[j] : bounds[j + 1]]
        z[blk[sel], j] = reset[sel]  # a run's last row takes nothing from the next row
    if m > 1:
        # blk is sorted: the last entry of each block has its largest run-end column
        is_last = np.r_[blk[1:] != blk[:-1], True]
        starts = _reverse_scan(z[:, 0].copy(), blk[is_last], gamma**b)  # true block starts
        carry = np.r_[starts[1:], 0.0]
        last_col = np.full(m, -1)
        last_col[blk[is_last]] = col[is_last]  # rows up to it take no carry
        for j in range(b):
            z[:, j] += gamma ** (b - j) * np.where(j > last_col, carry, 0.0)
    return z.ravel()[: x.size]


def step_fraction(step_index: np.ndarray, run_steps: np.ndarray) -> np.ndarray:
    """How far into its run each state is: ``step_index / run_steps``, float64 in [0, 1).

    Args:
        step_index: ``(N,)`` step of each state, 0-based.
        run_steps: ``(N,)`` number of steps (rows) of the state's run.

    Raises:
        VhError: a step index outside ``0 .. run_steps - 1``.
    """
    s = np.asarray(step_index, dtype=np.float64)
    n = np.asarray(run_steps, dtype=np.float64)
    if s.shape != n.shape:
        raise VhError(f"step_index {s.shape} and run steps {n.shape} differ", field="step_index")
    if s.size and (s.min() < 0 or np.any(s >= n)):
        raise VhError("a step index lies outside 0 .. run steps - 1", field="step_index")
    return s / np.where(n > 0, n, 1.0)
