"""Dataset readers: step shards, the values sidecar and metadata.db (DESIGN §2).

A dataset dir holds ``steps.npy`` or ``steps-<n>.npy`` shards of structured rows (sorted by
their number), an optional ``values.npy`` / ``values-<n>.npy`` sidecar aligned row for row with
them, and ``metadata.db`` (SQLite, table ``runs``, optional ``session``).

:func:`open_dataset` does the cheap checks (npy headers, byte sizes, field names and types, the
runs table); :meth:`Dataset.validate` scans every row, chunk by chunk and vectorised. Fields are
read by name with the dtype each file declares: the same logical row is 42, 46 or 48 bytes
depending on the writer, and run ids and step indices come in any integer width.

Every bad input raises :class:`~vh.errors.VhError` naming the file and the field.

Axes: N = rows (states, global across shards), 16 = cells (row-major 4x4), R = runs.
"""

from __future__ import annotations

import bisect
import re
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from itertools import pairwise
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from vh.errors import VhError
from vh.extract.board import MAX_EXP, N_CELLS, unpack
from vh.extract.formats import MOVE_FIELDS, STEP_FIELDS
from vh.progress import Progress

METADATA = "metadata.db"
STEP_COLUMNS = ("steps", "num_steps", "num_moves")  # probed in this order
SCORE_COLUMNS = ("max_score", "final_score")
# 1M rows per chunk: the decoded exps are 16 MiB and a chunk's working set (~60 MB) stays in
# memory comfortably while per-chunk Python overhead is negligible against 50M-row scans
CHUNK_ROWS = 1 << 20
_DB_TIMEOUT_S = 5.0  # how long to wait for a writer's lock on metadata.db before giving up

# logical column -> the field names writers use for it
_ALIASES = {
    "run_id": ("run_id",),
    "step": STEP_FIELDS,
    "move": MOVE_FIELDS,
    "board": ("board",),
    "mask": ("tile_65536_mask",),
    "exps": ("exps",),
    "reward": ("reward",),
    "return_raw": ("return_raw",),
}
# logical column -> (allowed dtype kinds, subarray shape, itemsize or None, wording)
_FIELD_TYPES = {
    "run_id": ("iu", (), None, "an integer"),
    "step": ("iu", (), None, "an integer"),
    "move": ("iu", (), None, "an integer"),
    "board": ("iu", (), 8, "a 64-bit integer"),
    "mask": ("iu", (), None, "an integer"),
    "exps": ("iu", (N_CELLS,), 1, "16 one-byte integers"),
    "reward": ("f", (), None, "a float"),
    "return_raw": ("f", (), None, "a float"),
}


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Shard:
    """One ``.npy`` file of structured rows, memory-mapped read-only.

    Attributes:
        path: the file.
        rows: number of rows.
        dtype: the row dtype the file declares.
        start: global index of its first row.
        array: the read-only memmap, ``(rows,)`` records.
    """

    path: Path
    rows: int
    dtype: np.dtype
    start: int
    array: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class RunsTable:
    """The ``runs`` table of metadata.db as int64 arrays ``(R,)``, sorted by id."""

    id: np.ndarray
    steps: np.ndarray
    final_score: np.ndarray
    highest_tile: np.ndarray  # tile value, e.g. 32768
    seed: np.ndarray  # -1 where the database has no seed column

    def __len__(self) -> int:
        return int(self.id.shape[0])

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each id in this table.

        Args:
            ids: integer run ids ``(K,)``.

        Returns:
            ``(pos i64 (K,), known bool (K,))``; ``pos`` is meaningless where not ``known``.
        """
        pos = np.searchsorted(self.id, ids)
        clipped = np.minimum(pos, max(len(self) - 1, 0))
        known = (pos < len(self)) & (self.id[clipped] == ids) if len(self) else pos < 0
        return clipped, known


@dataclass
class Rows:
    """Global rows ``[start, start + len)`` of a dataset, decoded.

    Attributes:
        run_id: i64 ``(n,)``.
        step_index: i64 ``(n,)``.
        exps: u8 ``(n, 16)`` tile exponents.
        move: u8 ``(n,)`` direction taken from this state (0 up, 1 down, 2 left, 3 right).
        reward: f32 ``(n,)`` from the values sidecar, ``None`` without one.
        return_raw: f32 ``(n,)`` from the values sidecar, ``None`` without one.
        start: global index of the first row.
    """

    run_id: np.ndarray
    step_index: np.ndarray
    exps: np.ndarray
    move: np.ndarray
    reward: np.ndarray | None = None
    return_raw: np.ndarray | None = None
    start: int = 0

    def __len__(self) -> int:
        return int(self.run_id.shape[0])

    def head(self, n: int, start: int) -> Rows:
        """The first ``n`` rows as views, relabelled to begin at global row ``start``."""
        cut = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "start"}
        return Rows(**{k: None if v is None else v[:n] for k, v in cut.items()}, start=start)


@dataclass(frozen=True)
class Scan:
    """What a full validation scan learnt.

    Attributes:
        rows: rows scanned.
        max_exponent: largest tile exponent in any state (-1 without rows).
        first_row_by_exp: i64 ``(256,)``: first global row whose largest exponent is e, -1 if
            none.
        run_rows: i64 ``(R,)`` rows of each run of the runs table.
        run_max_exponent: i64 ``(R,)`` largest exponent seen in each run (-1 without rows).
    """

    rows: int
    max_exponent: int
    first_row_by_exp: np.ndarray
    run_rows: np.ndarray
    run_max_exponent: np.ndarray


# --------------------------------------------------------------------------- npy files


def _discover(root: Path, stem: str) -> list[Path]:
    """``stem.npy``, or the ``stem-<n>.npy`` shards sorted by n (steps-2 before steps-10)."""
    single = root / f"{stem}.npy"
    sharded = list(root.glob(f"{stem}-*.npy"))
    if single.exists() and sharded:
        raise VhError(
            f"both {stem}.npy and {stem}-*.npy shards present; keep one", path=root, field=stem
        )
    if single.exists():
        return [single]
    numbered = []
    for p in sharded:
        m = re.fullmatch(rf"{re.escape(stem)}-(\d+)\.npy", p.name)
        if m is None:
            raise VhError(f"shard name has no number (expected {stem}-<n>.npy)", path=p)
        numbered.append((int(m.group(1)), p))
    numbered.sort()
    for (a, pa), (b, pb) in pairwise(numbered):
        if a == b:
            raise VhError(f"{pa.name} and {pb.name} have the same shard number", path=pb)
    return [p for _, p in numbered]


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` from a .npy header, without reading the data."""
    try:
        with open(path, "rb") as f:
            version = npformat.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = npformat.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):  # 3.0 differs only in the header's text encoding
                shape, _fortran, dtype = npformat.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            return shape, dtype, f.tell()
    except Exception as e:  # numpy parses header bytes with ast/tokenize: many error types
        reason = " ".join(str(e).split())[:160]
        raise VhError(f"not a valid .npy file ({reason})", path=path, field="header") from None


def _open_npy(path: Path) -> np.ndarray:
    """Memory-map a .npy of structured rows read-only, after checking its header and size.

    The size is checked first because a short file must be refused, never padded.
    """
    shape, dtype, offset = _read_header(path)
    if dtype.names is None:
        raise VhError(
            f"not a structured dtype (found {dtype.str}); expected rows with named fields",
            path=path,
            field="dtype",
        )
    if dtype.hasobject:
        raise VhError(
            "holds Python objects; expected plain numeric fields", path=path, field="dtype"
        )
    if len(shape) != 1:
        raise VhError(f"expected a 1-D array of rows, shape is {shape}", path=path, field="shape")
    expected, found = offset + shape[0] * dtype.itemsize, path.stat().st_size
    if found < expected:
        raise VhError(
            f"truncated: expected {expected:,} bytes, found {found:,}", path=path, field="shape"
        )
    if found > expected:
        raise VhError(
            f"expected {expected:,} bytes, found {found:,} (trailing data)",
            path=path,
            field="shape",
        )
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _open_shards(paths: list[Path]) -> list[Shard]:
    shards, start = [], 0
    for p in paths:
        arr = _open_npy(p)
        shards.append(
            Shard(path=p, rows=int(arr.shape[0]), dtype=arr.dtype, start=start, array=arr)
        )
        start += int(arr.shape[0])
    return shards


# --------------------------------------------------------------------------- fields


def _pick(dtype: np.dtype, logical: str, path: Path) -> str:
    """The field holding ``logical``, type-checked; a missing one names what was found."""
    names = dtype.names
    found = next((n for n in _ALIASES[logical] if n in names), None)
    if found is None:
        wanted = " or ".join(repr(n) for n in _ALIASES[logical])
        raise VhError(
            f"missing field {wanted}; found {', '.join(names)}",
            path=path,
            field=_ALIASES[logical][0],
        )
    kinds, shape, itemsize, wording = _FIELD_TYPES[logical]
    sub = dtype.fields[found][0]
    if (
        sub.base.kind not in kinds
        or sub.shape != shape
        or (itemsize is not None and sub.base.itemsize != itemsize)
    ):
        raise VhError(
            f"has dtype {sub.base.str}{list(sub.shape) or ''}, expected {wording}",
            path=path,
            field=found,
        )
    return found


def _step_layout(dtype: np.dtype, path: Path) -> tuple[str, dict[str, str]]:
    """``(layout, logical column -> field name)`` of a step shard, from its field names."""
    names = dtype.names
    if "exps" in names:
        layout, board = "selfplay", ("exps",)
    elif "board" in names:
        packed = "tile_65536_mask" in names
        layout, board = ("packed", ("board", "mask")) if packed else ("legacy", ("board",))
    else:
        raise VhError(
            f"missing field 'board' or 'exps'; found {', '.join(names)}", path=path, field="board"
        )
    cols = {k: _pick(dtype, k, path) for k in ("run_id", "step", "move", *board)}
    return layout, cols


def _agree(shards: list[Shard], resolve) -> tuple:
    """Resolve each shard's fields; every shard must give the first one's answer."""
    first = resolve(shards[0].dtype, shards[0].path)
    for s in shards[1:]:
        got = resolve(s.dtype, s.path)
        if got != first:
            raise VhError(
                f"layout {got} differs from {shards[0].path.name}'s {first}",
                path=s.path,
                field="dtype",
            )
    return first


def _value_fields(dtype: np.dtype, path: Path) -> dict[str, str]:
    return {k: _pick(dtype, k, path) for k in ("run_id", "step", "reward", "return_raw")}


# --------------------------------------------------------------------------- metadata.db


def _probe(
    cols: list[str], wanted: tuple[str, ...], path: Path, *, required: bool = True
) -> str | None:
    """First of ``wanted`` among the table's columns (case-insensitive, as SQLite is)."""
    lower = {c.lower(): c for c in cols}
    got = next((lower[w] for w in wanted if w in lower), None)
    if got is None and required:
        raise VhError(
            f"no usable column: expected one of {', '.join(wanted)}; columns are {', '.join(cols)}",
            path=path,
            field=f"runs.{wanted[0]}",
        )
    return got


def _int_column(rows: list[tuple], i: int, name: str, path: Path) -> np.ndarray:
    try:
        return np.fromiter((r[i] for r in rows), dtype=np.int64, count=len(rows))
    except (TypeError, ValueError, OverflowError):
        bad = next((r for r in rows if not isinstance(r[i], int)), rows[0])
        raise VhError(
            f"run {bad[0]!r}: value {bad[i]!r} is not an integer", path=path, field=f"runs.{name}"
        ) from None


def _runs_table(conn: sqlite3.Connection, path: Path) -> tuple[RunsTable, dict, dict]:
    tables = {
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
    }
    if "runs" not in tables:
        raise VhError(
            f"no 'runs' table (tables: {', '.join(sorted(tables)) or 'none'})",
            path=path,
            field="runs",
        )
    cols = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
    used = {
        "id": _probe(cols, ("id",), path),
        "steps": _probe(cols, STEP_COLUMNS, path),
        "score": _probe(cols, SCORE_COLUMNS, path),
        "highest_tile": _probe(cols, ("highest_tile",), path),
        "seed": _probe(cols, ("seed",), path, required=False),
    }
    names = [c for c in used.values() if c is not None]
    quoted = ", ".join(f'"{c}"' for c in names)
    rows = conn.execute(f'SELECT {quoted} FROM runs ORDER BY "{used["id"]}"').fetchall()
    arrays = {c: _int_column(rows, i, c, path) for i, c in enumerate(names)}
    no_seed = np.full(len(rows), -1, dtype=np.int64)
    runs = RunsTable(
        id=arrays[used["id"]],
        steps=arrays[used["steps"]],
        final_score=arrays[used["score"]],
        highest_tile=arrays[used["highest_tile"]],
        seed=arrays[used["seed"]] if used["seed"] else no_seed,
    )
    _check_runs_table(runs, used, path)
    return runs, used, _session(conn, tables, path)


def _check_runs_table(runs: RunsTable, used: dict, path: Path) -> None:
    dup = np.flatnonzero(np.diff(runs.id) == 0)
    if dup.size:
        raise VhError(
            f"run id {runs.id[dup[0]]} appears twice", path=path, field=f"runs.{used['id']}"
        )
    ht = runs.highest_tile
    bad = np.flatnonzero((ht <= 0) | ((ht & (ht - 1)) != 0))
    if bad.size:
        i = bad[0]
        raise VhError(
            f"run {runs.id[i]}: {ht[i]} is not a tile value (expected a power of two "
            "such as 32768, not an exponent)",
            path=path,
            field="runs.highest_tile",
        )
    neg = np.flatnonzero(runs.steps < 0)
    if neg.size:
        raise VhError(
            f"run {runs.id[neg[0]]}: negative step count {runs.steps[neg[0]]}",
            path=path,
            field=f"runs.{used['steps']}",
        )


def _session(conn: sqlite3.Connection, tables: set[str], path: Path) -> dict:
    if "session" not in tables:
        return {}
    cols = {r[1].lower() for r in conn.execute("PRAGMA table_info(session)")}
    if not {"meta_key", "meta_value"} <= cols:
        raise VhError(
            f"expected columns meta_key, meta_value; found {', '.join(sorted(cols))}",
            path=path,
            field="session",
        )
    plain = (str, int, float, type(None))
    return {
        str(k): v if isinstance(v, plain) else repr(v)
        for k, v in conn.execute("SELECT meta_key, meta_value FROM session")
    }


def _read_metadata(path: Path) -> tuple[RunsTable, dict, dict]:
    """``(runs, columns used, session)`` from metadata.db, opened read-only."""
    if not path.is_file():
        raise VhError("no metadata.db in the dataset dir", path=path.parent, field=METADATA)
    try:
        conn = sqlite3.connect(
            path.resolve().as_uri() + "?mode=ro", uri=True, timeout=_DB_TIMEOUT_S
        )
        try:
            return _runs_table(conn, path)
        finally:
            conn.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e):
            raise VhError(
                "database is locked (another process is writing it); retry when it is done",
                path=path,
            ) from None
        raise VhError(f"cannot read ({e})", path=path) from None
    except sqlite3.DatabaseError as e:
        raise VhError(f"not a readable SQLite database ({e})", path=path) from None


# --------------------------------------------------------------------------- row access


def _pieces(shards: list[Shard], start: int, stop: int) -> Iterator[tuple[Shard, int, int, int]]:
    """``(shard, local start, local stop, offset in the output)`` covering rows [start, stop)."""
    for s in shards:
        a, b = max(start, s.start), min(stop, s.start + s.rows)
        if a < b:
            yield s, a - s.start, b - s.start, a - start


def _gather(shards: list[Shard], name: str, start: int, stop: int, out: np.ndarray) -> None:
    """Copy field ``name`` of global rows [start, stop) into ``out`` (cast to its dtype)."""
    for s, a, b, o in _pieces(shards, start, stop):
        out[o : o + b - a] = s.array[name][a:b]


def _locate(shards: list[Shard], row: int) -> tuple[Path, int]:
    """``(shard path, row within the shard)`` of a global row."""
    i = bisect.bisect_right([s.start for s in shards], row) - 1
    return shards[i].path, row - shards[i].start


def _row_max(exps: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Largest exponent of each board, u8 ``(n,)``.

    A loop over the 16 columns runs ~3x faster than ``exps.max(axis=1)``, which numpy reduces
    along the short inner axis (measured ~100M vs ~34M rows/s).
    """
    out[:] = exps[:, 0]
    for j in range(1, N_CELLS):
        np.maximum(out, exps[:, j], out=out)
    return out


def _segments(rows: Rows, row_max: np.ndarray) -> tuple[np.ndarray, ...]:
    """Blocks of equal run id in one chunk: ``(ids, first global rows, lengths, max exps)``."""
    rid = rows.run_id
    first = np.flatnonzero(np.concatenate([[True], rid[1:] != rid[:-1]]))
    lengths = np.diff(np.append(first, len(rows)))
    return rid[first], first + rows.start, lengths, np.maximum.reduceat(row_max, first)


# --------------------------------------------------------------------------- the dataset


@dataclass
class Dataset:
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
        _gather(self.shards, f["run_id"], start, stop, rows.run_id)
        _gather(self.shards, f["step"], start, stop, rows.step_index)
        _gather(self.shards, f["move"], start, stop, rows.move)
        for s, a, b, o in _pieces(self.shards, start, stop):
            block, dst = s.array[a:b], rows.exps[o : o + b - a]  # dst: (n, 16) contiguous view
            if "exps" in f:
                dst[...] = block[f["exps"]]
            else:
                unpack(block[f["board"]], block[f["mask"]] if "mask" in f else None, out=dst)
        if self.values:
            _gather(self.values, self.value_fields["reward"], start, stop, rows.reward)
            _gather(self.values, self.value_fields["return_raw"], start, stop, rows.return_raw)

    # ----------------------------------------------------------------- validation

    def validate(
        self, vocab: int | None = None, *, chunk_rows: int = CHUNK_ROWS, progress: bool = False
    ) -> Scan:
        """Check every row (the scan runs once per Dataset; later calls reuse it).

        Checks: run ids known to metadata.db; each run's rows contiguous with strictly
        increasing step index; each run's row count equal to its db step count; no state
        holding a tile above the run's ``highest_tile``; every exponent below ``vocab``
        (default: the one given to :func:`open_dataset`; without one, at most 16); the values
        sidecar's run_id and step index equal to the step shards' row for row.

        Args:
            vocab: trunk vocab (16, or 17 with 65536 tiles) the exponents must fit.
            chunk_rows: rows read per chunk.
            progress: print rows/s and ETA on stderr.

        Returns:
            The :class:`Scan`.
        """
        if self._scan is None:
            self._scan = self._full_scan(chunk_rows, progress)
        self._check_vocab(self._scan, vocab if vocab is not None else self.vocab)
        return self._scan

    def _full_scan(self, chunk_rows: int, progress: bool) -> Scan:
        first_row = np.full(256, -1, dtype=np.int64)
        segs: list[tuple[np.ndarray, ...]] = []
        prev: tuple[int, int] | None = None  # (run_id, step) of the previous chunk's last row
        row_max = np.empty(min(chunk_rows, self.n_rows), dtype=np.uint8)
        loud = progress and self.n_rows > chunk_rows  # a single chunk is over too soon to show
        bar = Progress(self.n_rows, "validate", stream=sys.stderr if loud else None)
        for chunk in self.iter_chunks(chunk_rows, reuse=True):
            m = _row_max(chunk.exps, row_max[: len(chunk)])
            self._check_order(chunk, prev)
            self._check_sidecar(chunk)
            _note_first_rows(first_row, m, chunk.start)
            segs.append(_segments(chunk, m))
            prev = (int(chunk.run_id[-1]), int(chunk.step_index[-1]))
            bar.update(len(chunk))
        if loud:
            bar.close()
        run_rows, run_max = self._check_runs(segs)
        seen = np.flatnonzero(first_row >= 0)
        return Scan(
            rows=self.n_rows,
            max_exponent=int(seen[-1]) if seen.size else -1,
            first_row_by_exp=first_row,
            run_rows=run_rows,
            run_max_exponent=run_max,
        )

    def _error_at(self, row: int, field_name: str, message: str) -> VhError:
        path, local = _locate(self.shards, row)
        return VhError(f"row {local}: {message}", path=path, field=field_name)

    def _check_order(self, chunk: Rows, prev: tuple[int, int] | None) -> None:
        """Step index strictly increasing within each run, also across the chunk boundary."""
        rid, step = chunk.run_id, chunk.step_index
        if prev is not None and prev[0] == rid[0] and step[0] <= prev[1]:
            i, before = 0, prev[1]
        else:
            bad = np.flatnonzero((rid[1:] == rid[:-1]) & (step[1:] <= step[:-1]))
            if not bad.size:
                return
            i, before = int(bad[0]) + 1, int(step[bad[0]])
        raise self._error_at(
            chunk.start + i,
            self.fields["step"],
            f"run {rid[i]}: step index {step[i]} follows {before}; step "
            "indices must increase within a run",
        )

    def _check_sidecar(self, chunk: Rows) -> None:
        """The values sidecar names the same (run_id, step index) as the step row."""
        if not self.values:
            return
        start, stop = chunk.start, chunk.start + len(chunk)
        got = np.empty(len(chunk), dtype=np.int64)
        for logical, want in (("run_id", chunk.run_id), ("step", chunk.step_index)):
            _gather(self.values, self.value_fields[logical], start, stop, got)
            bad = np.flatnonzero(got != want)
            if bad.size:
                i = int(bad[0])
                path, local = _locate(self.values, start + i)
                spath, slocal = _locate(self.shards, start + i)
                raise VhError(
                    f"row {local}: {got[i]} but {spath.name} row {slocal} has "
                    f"{want[i]}; the sidecar must align row for row",
                    path=path,
                    field=self.value_fields[logical],
                )

    def _check_runs(self, segs: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray]:
        """Runs known, contiguous, of the db's length and under its highest tile.

        Returns:
            ``(rows per run, max exponent per run)``, i64 ``(R,)`` in runs-table order.
        """
        if segs:
            ids, starts, lengths, maxes = (np.concatenate(c) for c in zip(*segs, strict=True))
        else:
            ids = starts = lengths = maxes = np.zeros(0, dtype=np.int64)
        if ids.size:  # a run cut by a chunk boundary is two consecutive blocks: merge them
            keep = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
            ids, starts = ids[keep], starts[keep]
            lengths, maxes = np.add.reduceat(lengths, keep), np.maximum.reduceat(maxes, keep)
        pos, known = self.runs.positions(ids)
        if not known.all():
            i = int(np.flatnonzero(~known)[0])
            raise self._error_at(
                int(starts[i]),
                self.fields["run_id"],
                f"run_id {ids[i]} is not in {METADATA} runs ({len(self.runs)} runs)",
            )
        self._check_contiguous(ids, starts)
        run_rows = np.zeros(len(self.runs), dtype=np.int64)
        run_max = np.full(len(self.runs), -1, dtype=np.int64)
        run_rows[pos], run_max[pos] = lengths, maxes
        self._check_run_lengths(run_rows)
        self._check_highest_tile(run_max)
        return run_rows, run_max

    def _check_contiguous(self, ids: np.ndarray, starts: np.ndarray) -> None:
        order = np.argsort(ids, kind="stable")  # equal ids keep row order
        dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
        if dup.size:
            first, again = starts[order[dup[0]]], starts[order[dup[0] + 1]]
            p0, r0 = _locate(self.shards, int(first))
            raise self._error_at(
                int(again),
                self.fields["run_id"],
                f"run {ids[order[dup[0]]]} starts again here after its rows "
                f"from {p0.name} row {r0}; a run's rows must be contiguous",
            )

    def _check_run_lengths(self, run_rows: np.ndarray) -> None:
        bad = np.flatnonzero(run_rows != self.runs.steps)
        if bad.size:
            i = int(bad[0])
            col = self.columns_used["steps"]
            raise VhError(
                f"run {self.runs.id[i]}: {run_rows[i]} rows in the step shards but "
                f"{col} = {self.runs.steps[i]}",
                path=self.path / METADATA,
                field=f"runs.{col}",
            )

    def _check_highest_tile(self, run_max: np.ndarray) -> None:
        tiles = np.where(run_max >= 0, np.left_shift(1, np.maximum(run_max, 0)), 0)
        bad = np.flatnonzero(tiles > self.runs.highest_tile)
        if bad.size:
            i = int(bad[0])
            raise VhError(
                f"run {self.runs.id[i]}: its states hold a {tiles[i]} tile but "
                f"highest_tile = {self.runs.highest_tile[i]}",
                path=self.path / METADATA,
                field="runs.highest_tile",
            )

    def _check_vocab(self, scan: Scan, vocab: int | None) -> None:
        limit = vocab if vocab is not None else MAX_EXP + 1
        over = np.flatnonzero(scan.first_row_by_exp[limit:] >= 0) + limit
        if over.size:
            e = int(over[-1])
            where = f"the trunk's vocab of {vocab}" if vocab is not None else "the codec's range"
            raise self._error_at(
                int(scan.first_row_by_exp[e]),
                self.fields.get("exps") or self.fields["board"],
                f"tile exponent {e} is outside {where} (exponents 0..{limit - 1})",
            )

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


def _note_first_rows(first_row: np.ndarray, row_max: np.ndarray, start: int) -> None:
    """Record the first global row at which each largest exponent appears."""
    present = np.flatnonzero(np.bincount(row_max, minlength=256))
    for e in present[first_row[present] < 0]:
        first_row[e] = start + int(np.argmax(row_max == e))


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
    paths = _discover(root, "steps")
    if not paths:
        raise VhError("no steps.npy or steps-<n>.npy shards", path=root, field="steps")
    shards = _open_shards(paths)
    layout, cols = _agree(shards, _step_layout)
    # ---- optional values sidecar, aligned row for row
    values = _open_shards(_discover(root, "values"))
    value_fields = _agree(values, _value_fields) if values else {}
    n_side, n_rows = sum(s.rows for s in values), sum(s.rows for s in shards)
    if values and n_side != n_rows:
        raise VhError(
            f"{n_side:,} rows but the step shards have {n_rows:,}; the sidecar must "
            "align row for row",
            path=values[0].path,
            field="rows",
        )
    # ---- metadata.db
    runs, used, session = _read_metadata(root / METADATA)
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
