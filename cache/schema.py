"""The embedding cache format (DESIGN §3): names, dtypes, codecs and chunk sizes in one place.

A cache is a Zarr v3 group on a local or shared filesystem::

    CACHE/
      zarr.json              root group; attributes: see ROOT_ATTRS
      emb/                   [N, D] float16 (or float32), chunks (chunk_rows, D), bytes + crc32c
      columns/<name>/        [N] per-state columns (COLUMN_DTYPES, plus any extra)
      runs/<name>/           [R] the runs table, sorted by id (RUN_DTYPES)
      ledger/init.json       written once the arrays and the runs table exist
      ledger/columns.json    the per-state columns unit
      ledger/unit-XXXXXXXX.json   one per finished embedding unit (= one emb chunk)
      complete.json          the completion marker, written last
      extract.lock           held while an extract runs

Axes: N = states (rows), D = embedding width, R = runs.

Only what is in the ledger is done: zarr silently returns the fill value for a chunk that was
never written, so the arrays alone never say whether a row is real.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vh.errors import VhError

SCHEMA_VERSION = 1

EMB = "emb"
COLUMNS = "columns"
RUNS = "runs"
LEDGER_DIR = "ledger"
INIT_RECORD = "init"
COLUMNS_RECORD = "columns"
MARKER = "complete.json"
LOCK = "extract.lock"

# One work unit = one emb chunk, written whole by one process. 65,536 rows: at D = 288 in
# float16 a chunk is 36 MiB, large enough that per-chunk overheads (a file, a ledger record,
# an fsync) vanish and small enough that a few of them buffered per process stay cheap.
# Partial-chunk writes are ~9x slower than whole ones (MEASUREMENTS.md), and two processes
# touching one chunk lose data, hence unit == chunk.
DEFAULT_CHUNK_ROWS = 65_536

# Columns are written once, whole, by one process; 1M-row chunks keep the file count small
# (8 MiB for an int64 column) while a reader of a few columns never loads all of them at once.
COLUMN_CHUNK_ROWS = 1 << 20

# Per-state columns every extract writes; `return` only when a gamma is configured.
COLUMN_DTYPES: dict[str, np.dtype] = {
    "run_id": np.dtype("<i8"),
    "step_index": np.dtype("<i8"),
    "step_fraction": np.dtype("<f4"),
    "max_exp": np.dtype("u1"),
    "board_score": np.dtype("<i8"),
    "move_dir": np.dtype("u1"),
    "reward": np.dtype("<f4"),
    "return": np.dtype("<f4"),
}

# The runs table copied from metadata.db, so split predicates work from the cache alone.
RUN_DTYPES: dict[str, np.dtype] = {
    "id": np.dtype("<i8"),
    "steps": np.dtype("<i8"),
    "highest_tile": np.dtype("<i8"),
    "final_score": np.dtype("<i8"),
    "seed": np.dtype("<i8"),
}

EMB_DTYPES = ("float16", "float32")

# Root attributes every cache carries (the reader refuses a group without them).
ROOT_ATTRS = (
    "schema_version",
    "n",
    "d",
    "dtype",
    "chunk_rows",
    "n_units",
    "pooling",
    "columns",
    "extract_config",
    "vh_version",
    "fingerprint",
    "fingerprint_digest",
)


def check_attrs(path: str | os.PathLike, attrs: dict) -> None:
    """Refuse root attributes that are not those of a cache of this schema version."""
    where = Path(path) / "zarr.json"
    for key in ROOT_ATTRS:
        if key not in attrs:
            raise VhError(
                "root attribute missing: not a vh cache or a damaged one", path=where, field=key
            )
    if attrs["schema_version"] != SCHEMA_VERSION:
        raise VhError(
            f"schema version {attrs['schema_version']} is not the supported {SCHEMA_VERSION}",
            path=where,
            field="schema_version",
        )
    # a hand-edited or damaged zarr.json must fail here, not as a ValueError deep in a reader
    for key, kind in _ATTR_TYPES.items():
        value = attrs[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise VhError(f"has type {type(value).__name__}, expected {kind.__name__}",
                          path=where, field=key)  # fmt: skip
    for key in ("n", "d", "chunk_rows"):
        if attrs[key] < (0 if key == "n" else 1):
            raise VhError(f"{attrs[key]} is out of range", path=where, field=key)
    if attrs["n_units"] != n_units(attrs["n"], attrs["chunk_rows"]):
        raise VhError("does not match n and chunk_rows", path=where, field="n_units")
    if attrs["dtype"] not in EMB_DTYPES:
        raise VhError(f"{attrs['dtype']!r} is not one of {EMB_DTYPES}", path=where, field="dtype")
    if not all(isinstance(c, str) for c in attrs["columns"]):
        raise VhError("holds a name that is not a string", path=where, field="columns")


_ATTR_TYPES = {
    "n": int,
    "d": int,
    "chunk_rows": int,
    "n_units": int,
    "dtype": str,
    "columns": list,
    "extract_config": dict,
    "fingerprint": dict,
    "fingerprint_digest": str,
}


def n_units(n: int, chunk_rows: int) -> int:
    """Number of work units (= emb chunks) covering ``n`` rows."""
    return -(-n // chunk_rows)


def unit_range(unit: int, n: int, chunk_rows: int) -> tuple[int, int]:
    """Row range ``[start, stop)`` of one unit."""
    start = unit * chunk_rows
    return start, min(start + chunk_rows, n)


def unit_record_name(unit: int) -> str:
    """Ledger record name of an embedding unit (``unit-00000012``)."""
    return f"unit-{unit:08d}"


def emb_codecs() -> dict:
    """Codec keyword arguments for ``emb`` and every column: raw bytes plus a CRC32C checksum.

    No compression: float16 embeddings compress by only 9-18 % with zstd, which costs ~35 %
    of write and ~70 % of read speed (MEASUREMENTS.md; BENCHMARKS.md "extract" re-measures).
    The checksum makes zarr refuse a corrupted chunk on read instead of returning noise.
    """
    import zarr.codecs

    return {
        "serializer": zarr.codecs.BytesCodec(endian="little"),
        "compressors": [zarr.codecs.Crc32cCodec()],
        "filters": None,
    }
