"""``metadata.db`` of a dataset dir: the ``runs`` table (and ``session``), read strictly.

The runs table's columns are probed by name (``steps`` / ``num_steps`` / ``num_moves``,
``max_score`` / ``final_score``, ``highest_tile``, optional ``seed``); every value must be an
integer (an integral REAL such as 256.0 is accepted, 256.9, inf, NULL or text are not), ids
unique, ``highest_tile`` a tile value 2..2**17, steps and scores >= 0. The database is opened
read-only; a FIFO or device in its place (or beside it, as -wal/-journal/-shm) is refused.

Axes: R = runs.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vh.errors import VhError, require_regular_file

METADATA = "metadata.db"
STEP_COLUMNS = ("steps", "num_steps", "num_moves")  # probed in this order
SCORE_COLUMNS = ("max_score", "final_score")
_DB_TIMEOUT_S = 5.0  # how long to wait for a writer's lock on metadata.db before giving up
MAX_TILE = 1 << 17  # 131072: the largest tile a 4x4 board can reach (16 cells, spawns of 4)


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
    """Column ``i`` of the runs rows as int64, refusing what is not an integer.

    SQLite stores whatever it is given: an integral REAL (256.0) is taken as the integer it
    is; a fractional one (256.9, which a cast would truncate), inf, NULL, text or blobs are
    refused naming the run (column 0 holds the run id).
    """
    values = [r[i] for r in rows]
    if set(map(type, values)) <= {int}:  # the usual case, no per-value Python work
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:
            pass  # SQLite integers are 64-bit; defensive, reported below
    out = np.empty(len(values), dtype=np.int64)
    for k, v in enumerate(values):
        out[k] = _as_int(v, rows[k][0], name, path)
    return out


def _as_int(v, run, name: str, path: Path) -> int:
    """One runs value as an int, or the VhError that says why it is not one."""
    why = None
    if isinstance(v, float):
        if not np.isfinite(v):
            why = "is not finite"
        elif not v.is_integer():
            why = "is not an integer"
        elif not -(2**63) <= v < 2**63:
            why = "is out of the 64-bit integer range"
    elif not isinstance(v, int):
        why = "is not an integer"
    elif not -(2**63) <= v < 2**63:
        why = "is out of the 64-bit integer range"
    if why is not None:
        raise VhError(f"run {run!r}: {v!r} {why}", path=path, field=f"runs.{name}")
    return int(v)


def _check_runs_table(runs: RunsTable, used: dict, path: Path) -> None:
    """Checks on the runs table alone: unique ids, tile values, non-negative counts."""
    dup = np.flatnonzero(np.diff(runs.id) == 0)
    if dup.size:
        raise VhError(
            f"run id {runs.id[dup[0]]} appears twice", path=path, field=f"runs.{used['id']}"
        )
    ht = runs.highest_tile
    bad = np.flatnonzero((ht < 2) | ((ht & (ht - 1)) != 0))
    if bad.size:
        i = bad[0]
        raise VhError(
            f"run {runs.id[i]}: {ht[i]} is not a tile value (expected a power of two "
            "such as 32768, not an exponent)",
            path=path,
            field="runs.highest_tile",
        )
    over = np.flatnonzero(ht > MAX_TILE)
    if over.size:
        i = over[0]
        raise VhError(
            f"run {runs.id[i]}: {ht[i]} is above {MAX_TILE}, the largest tile a 4x4 board "
            "can reach",
            path=path,
            field="runs.highest_tile",
        )
    for key, what in (("steps", "step count"), ("score", "score")):
        col = getattr(runs, "steps" if key == "steps" else "final_score")
        neg = np.flatnonzero(col < 0)
        if neg.size:
            raise VhError(
                f"run {runs.id[neg[0]]}: negative {what} {col[neg[0]]}",
                path=path,
                field=f"runs.{used[key]}",
            )


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


def read_metadata(path: Path) -> tuple[RunsTable, dict, dict]:
    """``(runs, columns used, session)`` from metadata.db, opened read-only."""
    if not path.exists() and not path.is_symlink():
        raise VhError("no metadata.db in the dataset dir", path=path.parent, field=METADATA)
    require_regular_file(path)  # a FIFO or device would make SQLite's open() block
    for suffix in ("-wal", "-journal", "-shm"):  # SQLite opens these beside the database
        side = path.with_name(path.name + suffix)
        if side.exists() or side.is_symlink():
            require_regular_file(side)
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
