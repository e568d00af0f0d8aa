"""Labels of the test and validation states, from the outcomes a predictions file carries.

Each target kind owns its labels (``vh.heads.targets``: one implementation for fit and eval);
this module keeps eval's names for them. Axes: n = states, K = thresholds, C = score bins.
"""

from __future__ import annotations

import numpy as np

from vh.heads import targets
from vh.heads.targets import reached, tile_bucket
from vh.heads.targets.logscore import score_bin

__all__ = ["class_labels", "reached", "score_bin", "tile_bucket"]


def class_labels(
    kind: str,
    *,
    thresholds: np.ndarray,
    highest_tile: np.ndarray,
    final_score: np.ndarray,
    bin_edges: np.ndarray | None = None,
) -> np.ndarray:
    """The label a head of ``kind`` is scored against (the temperature's ``y``).

    Args:
        kind: a target kind with class labels (``ordinal``, ``tiles``, ``logscore``).
        thresholds: ``(K,)`` tile thresholds.
        highest_tile, final_score: ``(n,)`` outcomes of each state's run.
        bin_edges: ``(C + 1,)`` log-score bin edges (logscore only).

    Returns:
        ordinal u1 ``(n, K)``; tiles and logscore int64 ``(n,)``.
    """
    values = {"highest_tile": highest_tile, "final_score": final_score}
    out = {} if bin_edges is None else {"bin_edges": bin_edges}
    return targets.get(kind, field="kind").eval_labels(values, np.asarray(thresholds), out)
