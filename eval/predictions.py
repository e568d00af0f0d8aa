"""The predictions file: one head's outputs on the common test states, one ``.npz`` per head.

Written by :func:`vh.eval.run.evaluate` (or by hand for planted data) as
``REPORT_DIR/predictions/<name>.npz``, and read back by the report, which needs nothing else
from the head. Every array is a plain numpy array (no pickles); strings are 0-d unicode arrays
and ``meta`` is JSON text.

Fields: ``name``, ``kind``, ``meta``, ``thresholds (K,)``, ``medians (K + 1,)``, ``row_<key>
(n,)`` for each of :data:`ROW_KEYS`, and ``out_<key>`` for the head's outputs (see
:class:`Predictions`). Axes: n = test states, m = validation states, K = thresholds.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vh import durable
from vh.errors import VhError
from vh.heads import targets

# Per test state, in every predictions file: the keys that align heads, the slices' inputs,
# and the outcomes the labels come from.
ROW_KEYS = (
    "run_id",
    "step_index",
    "step_fraction",
    "run_length",
    "max_tile",
    "highest_tile",
    "final_score",
)
KINDS = targets.KINDS  # the built-in kinds; any registered kind is read (targets.names())


@dataclass
class Predictions:
    """One head's predictions on the test states, row-aligned with the other heads'.

    Attributes:
        name: the run's name in the report.
        kind: ``ordinal`` | ``tiles`` | ``logscore`` | ``return``.
        thresholds: ``(K,)`` tile values ``T_k`` (labels and tile slices).
        medians: ``(K + 1,)`` median final score per highest-tile bucket (train split).
        rows: per test state, each ``(n,)``: see ``ROW_KEYS``.
        out: the head's outputs: ``logits`` ``(n, K)`` ordinal, ``(n, K + 1)`` tiles,
            ``(n, bins)`` logscore; ``val_logits`` and ``val_y`` (validation, for the
            temperature); ``bin_edges`` ``(bins + 1,)`` in log1p(score) units (logscore);
            ``value``, ``ret`` (raw return units) and optional ``nll_row`` (return).
        meta: JSON facts: run_dir, member, arch, monotone, encoding, n_params, baseline,
            cache ``{path, fingerprint, trunk}``.
    """

    name: str
    kind: str
    thresholds: np.ndarray
    medians: np.ndarray
    rows: dict[str, np.ndarray]
    out: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.rows["run_id"].shape[0])


def save_predictions(path: str | os.PathLike, pred: Predictions) -> None:
    """Write a predictions file atomically (vh.durable: temp file, fsync, rename)."""
    arrays = {
        "name": np.array(pred.name),
        "kind": np.array(pred.kind),
        "meta": np.array(json.dumps(pred.meta)),
        "thresholds": pred.thresholds,
        "medians": pred.medians,
    }
    arrays |= {f"row_{k}": pred.rows[k] for k in ROW_KEYS}
    arrays |= {f"out_{k}": v for k, v in pred.out.items()}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    durable.atomic_write(path, write)


def load_predictions(path: str | os.PathLike) -> Predictions:
    """Read and check a predictions file; any defect is a :class:`VhError` naming the field."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise VhError("predictions file not found", path=path) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise VhError(f"unreadable predictions file ({e})", path=path) from None

    def need(key: str) -> np.ndarray:
        if key not in data:
            raise VhError("missing field", path=path, field=key)
        return data[key]

    kind = str(need("kind"))
    if kind not in targets.names():
        raise VhError(
            f"unknown head kind {kind!r} (valid: {', '.join(targets.names())})",
            path=path,
            field="kind",
        )
    try:
        meta = json.loads(str(need("meta")))
    except json.JSONDecodeError:
        raise VhError("not valid JSON", path=path, field="meta") from None
    rows = {k: need(f"row_{k}") for k in ROW_KEYS}
    out = {k[4:]: v for k, v in data.items() if k.startswith("out_")}
    pred = Predictions(
        name=str(need("name")),
        kind=kind,
        thresholds=need("thresholds"),
        medians=need("medians"),
        rows=rows,
        out=out,
        meta=meta,
    )
    _check_shapes(pred, path)
    return pred


def _check_shapes(pred: Predictions, path: str | os.PathLike) -> None:
    """Refuse arrays whose shapes do not fit the kind, naming the field."""
    n, k = pred.n, pred.thresholds.shape[0]

    def expect(key: str, arr: np.ndarray | None, shape: tuple) -> None:
        if arr is None:
            raise VhError("missing field", path=path, field=key)
        if arr.shape != shape:
            raise VhError(f"shape {arr.shape}, expected {shape}", path=path, field=key)

    for key in ROW_KEYS:
        expect(f"row_{key}", pred.rows[key], (n,))
    expect("medians", pred.medians, (k + 1,))
    targets.get(pred.kind).check_outputs(pred, expect, path)  # the outputs are the kind's
