"""The per-state columns of a cache (DESIGN §3), computed from a dataset with numpy only.

``run_id``, ``step_index``, ``move_dir``, ``max_exp``, ``board_score``, ``reward``,
``step_fraction`` and (with a discount) ``return``: what the heads' targets and the report's
slices read, one value per state, in the cache's row order.

Axes: N = rows (states).
"""

from __future__ import annotations

import numpy as np

from vh.cache import schema
from vh.extract import board
from vh.extract.dataset import Dataset
from vh.extract.rewards import discounted_returns, replay_rewards, step_fraction


def column_dtypes(gamma: float | None) -> dict[str, np.dtype]:
    """The columns a cache holds and their dtypes: ``return`` only with a discount."""
    return {k: v for k, v in schema.COLUMN_DTYPES.items() if k != "return" or gamma is not None}


def compute_columns(
    ds: Dataset, gamma: float | None, block_rows: int = 1 << 20
) -> dict[str, np.ndarray]:
    """Every per-state column, vectorised over the dataset in blocks of rows.

    Rewards come from the values sidecar when there is one, else from replaying each move
    on its board. Returns need whole runs, so they are computed after all rewards.

    Args:
        ds: the opened (and validated) dataset.
        gamma: discount of the ``return`` column; None = no return column.
        block_rows: rows decoded at a time.

    Returns:
        name -> ``(N,)`` array, with the dtypes of ``schema.COLUMN_DTYPES``.
    """
    n = ds.n_rows
    names = [k for k in schema.COLUMN_DTYPES if k != "return" or gamma is not None]
    cols = {k: np.empty(n, dtype=schema.COLUMN_DTYPES[k]) for k in names}
    exps = np.empty((min(block_rows, max(n, 1)), 16), dtype=np.uint8)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        rows = ds.read(start, stop, out_exps=exps)
        cols["run_id"][start:stop] = rows.run_id
        cols["step_index"][start:stop] = rows.step_index
        cols["move_dir"][start:stop] = rows.move
        cols["max_exp"][start:stop] = board.max_exponent(rows.exps)
        cols["board_score"][start:stop] = board.board_score(rows.exps)
        cols["reward"][start:stop] = (
            rows.reward if rows.reward is not None else replay_rewards(rows.exps, rows.move)
        )
    pos, _known = ds.runs.positions(cols["run_id"])  # validate() proved every id known
    cols["step_fraction"][:] = step_fraction(cols["step_index"], ds.runs.steps[pos])
    if gamma is not None:
        cols["return"][:] = discounted_returns(cols["reward"], cols["run_id"], gamma)
    return cols


def runs_table(ds: Dataset) -> dict[str, np.ndarray]:
    """The cache's ``runs`` table: the dataset's runs, as stored arrays."""
    r = ds.runs
    return {
        "id": r.id,
        "steps": r.steps,
        "highest_tile": r.highest_tile,
        "final_score": r.final_score,
        "seed": r.seed,
    }
