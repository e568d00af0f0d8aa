"""Dataset readers: step shards, the values sidecar and metadata.db (DESIGN §2).

A dataset dir holds ``steps.npy`` or ``steps-<n>.npy`` shards of structured rows (sorted by
their number), an optional ``values.npy`` / ``values-<n>.npy`` sidecar aligned row for row with
them, and ``metadata.db`` (SQLite, table ``runs``, optional ``session``).

:func:`open_dataset` does the cheap checks (npy headers, byte sizes, field names and types, the
runs table); :meth:`Dataset.validate` scans every row, chunk by chunk and vectorised. Fields are
read by name with the dtype each file declares: the same logical row is 42, 46 or 48 bytes
depending on the writer, and run ids and step indices come in any integer width.

Every bad input raises :class:`~vh.errors.VhError` naming the file and the field.

The modules around this one: :mod:`vh.extract.shards` (npy files, fields, global rows),
:mod:`vh.extract.metadata` (metadata.db) and :mod:`vh.extract.dataset_checks` (every row
checked, and why each bound holds).

Axes: N = rows (states, global across shards), 16 = cells (row-major 4x4), R = runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vh.errors import VhError
from vh.extract.board import MAX_EXP, N_CELLS, unpack
from vh.extract.dataset_checks import DatasetChecks, Scan
from vh.extract.metadata import (  # noqa: F401  (re-exported: they lived here before)
    MAX_TILE,
    METADATA,
    SCORE_COLUMNS,
    STEP_COLUMNS,
    RunsTable,
    read_metadata,
)
from vh.extract.shards import (  # noqa: F401  (Rows, Shard re-exported)
    Rows,
    Shard,
    agree,
    discover_shards,
    gather,
    open_shards,
    pieces,
    sidecar_fields,
    step_layout,
)

# 1M rows per chunk: the decoded exps are 16 MiB and a chunk's working set (~60 MB) stays in
# memory comfortably while per-chunk Python overhead is negligible against 50M-row scans
CHUNK_ROWS = 1 << 20


# --------------------------------------------------------------------------- the dataset


@dataclass
class Dataset(DatasetChecks):
    """An opened dataset dir (see :func:`open_dataset`).

    Attributes:
        path: the dataset dir.
        layout: ``'packed'``, ``'selfplay'`` or ``'legacy'``.
        shards: the step shards in order.
        fields: logical column (run_id, step, move, board, mask, exps) -> field name.
        runs: the runs table of metadata.db.
        columns_used: which metadata.db column gave each runs value (seed: None if absent).
        session: the ``session`` table as a dict (empty if absent).
        values: the values sidecar shards (empty without a sidecar).
        value_fields: logical column (run_id, step, reward, return_raw) -> sidecar field name.
        vocab: trunk vocab that :meth:`validate` checks exponents against by default.
    """

    path: Path
    layout: str
    shards: list[Shard]
    fields: dict[str, str]
    runs: RunsTable
    columns_used: dict[str, str | None]
    session: dict
    values: list[Shard]
    value_fields: dict[str, str]
    vocab: int | None = None
    _scan: Scan | None = field(default=None, repr=False)

    @property
    def n_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def files(self) -> list[Path]:
        """Every input file (step shards, sidecar shards, metadata.db), for fingerprints."""
        return (
            [s.path for s in self.shards] + [s.path for s in self.values] + [self.path / METADATA]
        )

    # ----------------------------------------------------------------- reading

    def read(self, start: int, stop: int, out_exps: np.ndarray | None = None) -> Rows:
        """Global rows ``[start, stop)`` across shards, boards decoded.

        Args:
            start: first global row.
            stop: one past the last global row.
            out_exps: optional preallocated C-contiguous u8 ``(>= n, 16)`` for the exponents
                (reusing a buffer avoids the page faults of fresh memory).

        Returns:
            The rows; ``exps`` is a view of ``out_exps`` when one is given.
        """
        start, stop = self._bounds(start, stop)
        rows = self._alloc(stop - start, start, out_exps)
        self._fill(rows)
        return rows

    def iter_chunks(
        self,
        rows: int = CHUNK_ROWS,
        start: int = 0,
        stop: int | None = None,
        *,
        reuse: bool = False,
    ) -> Iterator[Rows]:
        """Consecutive chunks of ``rows`` rows (the last may be shorter) over [start, stop).

        Args:
            rows: rows per chunk.
            start: first global row.
            stop: one past the last global row (``None``: the end).
            reuse: fill one set of buffers again for every chunk (faster; a chunk is then
                only valid until the next one is produced).

        Yields:
            :class:`Rows` with ``.start`` set to their first global row.
        """
        if rows <= 0:
            raise ValueError(f"rows per chunk must be positive, got {rows}")
        start, stop = self._bounds(start, stop)
        buf = self._alloc(min(rows, stop - start)) if reuse else None
        for s in range(start, stop, rows):
            n = min(rows, stop - s)
            chunk = buf.head(n, s) if reuse else self._alloc(n, s)
            self._fill(chunk)
            yield chunk

    def _bounds(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.n_rows if stop is None else stop
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"rows [{start}, {stop}) outside [0, {self.n_rows})")
        return int(start), int(stop)

    def _alloc(self, n: int, start: int = 0, out_exps: np.ndarray | None = None) -> Rows:
        """Fresh buffers for ``n`` rows starting at global row ``start``."""
        if out_exps is None:
            exps = np.empty((n, N_CELLS), dtype=np.uint8)
        else:
            if (
                out_exps.dtype != np.uint8
                or out_exps.ndim != 2
                or out_exps.shape[1] != N_CELLS
                or out_exps.shape[0] < n
                or not out_exps.flags.c_contiguous
            ):
                raise ValueError(
                    "out_exps must be a C-contiguous uint8 (>= n, 16) array, got "
                    f"{out_exps.dtype} {out_exps.shape}"
                )
            exps = out_exps[:n]
        side = (lambda: np.empty(n, dtype=np.float32)) if self.values else (lambda: None)
        return Rows(
            run_id=np.empty(n, np.int64),
            step_index=np.empty(n, np.int64),
            exps=exps,
            move=np.empty(n, np.uint8),
            reward=side(),
            return_raw=side(),
            start=start,
        )

    def _fill(self, rows: Rows) -> None:
        """Read global rows [rows.start, rows.start + len) into the buffers of ``rows``."""
        start, stop, f = rows.start, rows.start + len(rows), self.fields
        gather(self.shards, f["run_id"], start, stop, rows.run_id)
        gather(self.shards, f["step"], start, stop, rows.step_index)
        gather(self.shards, f["move"], start, stop, rows.move)
        for s, a, b, o in pieces(self.shards, start, stop):
            block, dst = s.array[a:b], rows.exps[o : o + b - a]  # dst: (n, 16) contiguous view
            if "exps" in f:
                dst[...] = block[f["exps"]]
            else:
                unpack(block[f["board"]], block[f["mask"]] if "mask" in f else None, out=dst)
        if self.values:
            gather(self.values, self.value_fields["reward"], start, stop, rows.reward)
            gather(self.values, self.value_fields["return_raw"], start, stop, rows.return_raw)

    # ----------------------------------------------------------------- summary

    def summary(self, *, progress: bool = False) -> dict:
        """What ``vh inspect`` shows, after a full :meth:`validate` (JSON-able).

        Args:
            progress: print the validation's rows/s and ETA on stderr.

        Returns:
            A dict: path, layout, fields, shards (name, rows, itemsize), rows, runs,
            steps_per_run (min/median/max), highest_tile (tile value -> runs), final_score
            (quantiles), max_exponent, vocab_needed, columns_used, session, values_sidecar.
        """
        scan = self.validate(progress=progress)
        runs = self.runs
        tiles, counts = np.unique(runs.highest_tile, return_counts=True)
        return {
            "path": str(self.path),
            "layout": self.layout,
            "fields": dict(self.fields),
            "shards": [
                {"name": s.path.name, "rows": s.rows, "itemsize": s.dtype.itemsize}
                for s in self.shards
            ],
            "rows": self.n_rows,
            "runs": len(runs),
            "steps_per_run": _quantiles(runs.steps, {"min": 0, "median": 0.5, "max": 1}),
            "highest_tile": {str(int(t)): int(c) for t, c in zip(tiles, counts, strict=True)},
            "final_score": _quantiles(
                runs.final_score,
                {
                    "min": 0,
                    "p10": 0.1,
                    "p25": 0.25,
                    "median": 0.5,
                    "p75": 0.75,
                    "p90": 0.9,
                    "max": 1,
                },
            ),
            "max_exponent": scan.max_exponent,
            "vocab_needed": 17 if scan.max_exponent >= MAX_EXP else 16,
            "columns_used": dict(self.columns_used),
            "session": dict(self.session),
            "values_sidecar": [s.path.name for s in self.values],
        }


def _quantiles(x: np.ndarray, qs: dict[str, float]) -> dict[str, float | None]:
    if x.size == 0:
        return {k: None for k in qs}
    return {k: float(np.quantile(x, q)) for k, q in qs.items()}


def open_dataset(path: str | Path, *, vocab: int | None = None) -> Dataset:
    """Open a dataset dir and do the cheap checks; :meth:`Dataset.validate` scans every row.

    Args:
        path: the dataset dir (step shards, optional values sidecar, metadata.db).
        vocab: trunk vocab (16 or 17) that :meth:`Dataset.validate` checks exponents against.

    Returns:
        The :class:`Dataset`, its shards memory-mapped read-only.

    Raises:
        VhError: naming the file and the field, for any bad input.
    """
    root = Path(path)
    if not root.is_dir():
        raise VhError("no such dataset directory", path=root)
    # ---- step shards: headers, sizes, one layout for all
    paths = discover_shards(root, "steps")
    if not paths:
        raise VhError("no steps.npy or steps-<n>.npy shards", path=root, field="steps")
    shards = open_shards(paths)
    layout, cols = agree(shards, step_layout)
    # ---- optional values sidecar, aligned row for row
    values = open_shards(discover_shards(root, "values"))
    value_fields = agree(values, sidecar_fields) if values else {}
    n_side, n_rows = sum(s.rows for s in values), sum(s.rows for s in shards)
    if values and n_side != n_rows:
        raise VhError(
            f"{n_side:,} rows but the step shards have {n_rows:,}; the sidecar must "
            "align row for row",
            path=values[0].path,
            field="rows",
        )
    # ---- metadata.db
    runs, used, session = read_metadata(root / METADATA)
    return Dataset(
        path=root,
        layout=layout,
        shards=shards,
        fields=cols,
        runs=runs,
        columns_used=used,
        session=session,
        values=values,
        value_fields=value_fields,
        vocab=vocab,
    )
