"""Reading a cache: open it with expectations, then columns, the runs table and emb rows.

::

    c = open_cache(path, expect_fingerprint=None, allow_incomplete=False)
    c.n, c.d, c.dtype, c.attrs, c.fingerprint
    c.column("max_exp"); c.runs["highest_tile"]; c.runs_db()      # phase 2 labels and splits
    c.read_rows(0, 65536, out=buf); c.take(idx); c.iter_blocks()  # embeddings
    c.read_chunk(j, out=buf)                                       # one whole chunk, fast

A cache without its completion marker is refused unless ``allow_incomplete``; then only the
units in the ledger are real (``done_units()``), the rest read as NaN. emb reads go through
zarr into preallocated buffers, whole chunks at a time (a fresh buffer costs page faults that
make a read several times slower, MEASUREMENTS.md). :meth:`CacheReader.read_chunk` reads one
chunk file straight into the caller's buffer (one ``readinto``, the CRC32C checked on that
buffer, no intermediate bytes object) when the array has this schema's layout (raw bytes plus
crc32c, ``/``-separated chunk keys, a local folder), else through zarr; it is what the
streamed fit's reader threads call, several chunks in flight.

Axes: N = rows, D = embedding width, R = runs, C = rows per chunk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.core.buffer import cpu

from vh.cache import fingerprint as fpmod
from vh.cache import ledger, schema
from vh.errors import VhError

# take() reads runs of consecutive needed chunks in one zarr call, up to this many, so zarr
# keeps several chunks in flight (its concurrency is per call)
_TAKE_CHUNKS_PER_READ = 4


def open_cache(
    path: str | os.PathLike,
    *,
    expect_fingerprint: dict | None = None,
    allow_incomplete: bool = False,
) -> CacheReader:
    """Open a cache for reading, refusing one that is unfinished or from other inputs.

    Args:
        path: the cache folder.
        expect_fingerprint: when given, the cache's fingerprint must equal it; the error says
            which entries differ.
        allow_incomplete: open a cache without its completion marker (read only the done units).

    Returns:
        A :class:`CacheReader`.
    """
    return CacheReader(
        path, expect_fingerprint=expect_fingerprint, allow_incomplete=allow_incomplete
    )


def _open_group(path: Path) -> zarr.Group:
    if not (path / "zarr.json").is_file():
        raise VhError("not a vh cache (no zarr.json)", path=path)
    try:
        return zarr.open_group(str(path), mode="r", zarr_format=3)
    except Exception as e:  # zarr raises several types for a damaged group; all mean bad input
        raise VhError(f"cannot open the zarr group ({type(e).__name__}: {e})", path=path) from None


class CacheReader:
    """An opened cache (see :func:`open_cache`, which is how to make one).

    Attributes:
        path: the cache folder.
        n: rows. d: embedding width. dtype: emb dtype (numpy).
        attrs: root attributes. fingerprint: the fingerprint the cache was computed from.
        chunk_rows: rows per emb chunk.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        expect_fingerprint: dict | None = None,
        allow_incomplete: bool = False,
    ):
        self.path = Path(path)
        self._group = _open_group(self.path)
        self.attrs = dict(self._group.attrs)
        schema.check_attrs(self.path, self.attrs)
        self.n, self.d = int(self.attrs["n"]), int(self.attrs["d"])
        self.dtype = np.dtype(self.attrs["dtype"])
        self.fingerprint = self.attrs["fingerprint"]
        self._digest = self.attrs["fingerprint_digest"]
        if expect_fingerprint is not None:
            fpmod.check(self.fingerprint, expect_fingerprint, self.path)
        if not self.complete and not allow_incomplete:
            done = self.done_units()
            raise VhError(
                f"cache is incomplete ({int(done.sum())} of {done.size} units done, "
                "no completion marker); rerun vh extract to finish it",
                path=self.path,
                field=schema.MARKER,
                code=3,
            )
        try:
            self._emb = self._group[schema.EMB]
        except KeyError:
            raise VhError("array missing", path=self.path, field=schema.EMB) from None
        if tuple(self._emb.shape) != (self.n, self.d) or self._emb.dtype != self.dtype:
            raise VhError(
                f"array is {self._emb.shape} {self._emb.dtype}, the attributes say "
                f"({self.n}, {self.d}) {self.dtype}",
                path=self.path,
                field=schema.EMB,
            )
        self.chunk_rows = int(self._emb.chunks[0])
        self._direct = _direct_layout(self.path / schema.EMB, self.chunk_rows, self.d)
        self._local = threading.local()  # per-thread scratch chunks for take()
        self._runs: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ state

    @property
    def complete(self) -> bool:
        """Whether the completion marker exists and belongs to this fingerprint."""
        marker = self.path / schema.MARKER
        if not marker.is_file():
            return False
        return (
            ledger.read_json(marker, what="completion marker").get("fingerprint_digest")
            == self._digest
        )

    def done_units(self) -> np.ndarray:
        """bool ``(n_units,)``: units with a valid ledger record (all True when complete)."""
        return ledger.done_units(self.path, self.n, int(self.attrs["chunk_rows"]), self._digest)

    # ------------------------------------------------------------------ columns and runs

    @property
    def column_names(self) -> list[str]:
        return list(self.attrs["columns"])

    def has_column(self, name: str) -> bool:
        return name in self.attrs["columns"]

    def column(self, name: str) -> np.ndarray:
        """One per-state column, ``(N,)``, read whole."""
        if not self.has_column(name):
            raise VhError(
                f"no such column (has: {', '.join(self.column_names)})",
                path=self.path,
                field=f"columns/{name}",
            )
        rec = ledger.read_record(self.path, schema.COLUMNS_RECORD)
        if rec is None or rec.get("fingerprint_digest") != self._digest:
            raise VhError(
                "the per-state columns were not written yet (rerun vh extract)",
                path=self.path,
                field=f"columns/{name}",
                code=3,
            )
        return self._read_array(f"{schema.COLUMNS}/{name}")

    @property
    def runs(self) -> dict[str, np.ndarray]:
        """The runs table, name -> ``(R,)``, sorted by id."""
        if self._runs is None:
            try:
                have = {k for k, _ in self._group[schema.RUNS].arrays()}
            except KeyError:
                raise VhError("runs table missing", path=self.path, field=schema.RUNS) from None
            names = [k for k in schema.RUN_DTYPES if k in have] + sorted(
                have - set(schema.RUN_DTYPES)
            )
            self._runs = {k: self._read_array(f"{schema.RUNS}/{k}") for k in names}
        return self._runs

    def runs_db(self) -> sqlite3.Connection:
        """The runs table in an in-memory SQLite database (table ``runs``), for SQL predicates."""
        runs = self.runs
        names = list(runs)
        db = sqlite3.connect(":memory:")
        cols = ", ".join(f"{k} INTEGER PRIMARY KEY" if k == "id" else k for k in names)
        db.execute(f"CREATE TABLE runs ({cols})")
        rows = zip(*(runs[k].tolist() for k in names), strict=True)
        db.executemany(f"INSERT INTO runs VALUES ({', '.join('?' * len(names))})", rows)
        db.commit()
        return db

    def _read_array(self, name: str) -> np.ndarray:
        try:
            return self._group[name][...]
        except KeyError:
            raise VhError("array missing", path=self.path, field=name) from None
        except ValueError as e:  # the crc32c codec refuses a corrupted chunk
            raise VhError(f"cannot read ({e})", path=self.path, field=name) from None

    # ------------------------------------------------------------------ embeddings

    def _read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        try:
            self._emb.get_basic_selection(
                slice(start, stop), out=cpu.NDBuffer.from_numpy_array(out)
            )
        except ValueError as e:  # the crc32c codec refuses a corrupted chunk
            raise VhError(
                f"cannot read rows {start}:{stop} ({e})", path=self.path, field=schema.EMB
            ) from None
        return out

    def _out(self, rows: int, out: np.ndarray | None) -> np.ndarray:
        if out is None:
            return np.empty((rows, self.d), dtype=self.dtype)
        if out.shape != (rows, self.d) or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise VhError(
                f"out must be a C-contiguous {self.dtype} array of shape "
                f"{(rows, self.d)}, got {out.dtype} {out.shape}",
                field="out",
            )
        return out

    def read_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` of emb.

        Args:
            start, stop: row range inside ``[0, N]``.
            out: optional preallocated C-contiguous ``(stop - start, D)`` array of the emb dtype
                (reusing one is several times faster than a fresh array).

        Returns:
            ``(stop - start, D)`` array (``out`` when given).
        """
        if not 0 <= start <= stop <= self.n:
            raise VhError(
                f"row range {start}:{stop} outside 0:{self.n}", path=self.path, field=schema.EMB
            )
        out = self._out(stop - start, out)
        return self._read_into(start, stop, out) if stop > start else out

    @property
    def n_chunks(self) -> int:
        """Chunks of emb (the last one may hold fewer than ``chunk_rows`` rows)."""
        return -(-self.n // self.chunk_rows)

    def read_chunk(self, j: int, out: np.ndarray) -> np.ndarray:
        """The rows of emb chunk ``j``, read whole into ``out``; thread-safe.

        Args:
            j: chunk index in ``[0, n_chunks)``.
            out: preallocated C-contiguous ``(chunk_rows, D)`` array of the emb dtype (room
                for a whole chunk, also for the shorter last one; reused by the caller).

        Returns:
            ``out[:rows]``, the chunk's rows. A chunk never written reads as NaN (the fill
            value, as through zarr); a damaged one raises VhError naming its rows.
        """
        if not 0 <= j < self.n_chunks:
            raise VhError(f"chunk {j} outside 0:{self.n_chunks}", path=self.path, field=schema.EMB)
        out = self._out(self.chunk_rows, out)
        start = j * self.chunk_rows
        stop = min(start + self.chunk_rows, self.n)
        if not self._direct:
            return self._read_into(start, stop, out[: stop - start])
        try:
            f = open(self.path / schema.EMB / "c" / str(j) / "0", "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:  # never written: zarr's fill value
            out[: stop - start] = np.nan
            return out[: stop - start]
        with f:
            got = _read_full(f, memoryview(out).cast("B"))
            tail = f.read(8)  # the 4 checksum bytes, and proof that nothing follows
        if got != out.nbytes or len(tail) != 4:
            raise VhError(
                f"cannot read rows {start}:{stop} (chunk file has {got + len(tail)} bytes, "
                f"expected {out.nbytes + 4})",
                path=self.path,
                field=schema.EMB,
            )
        if google_crc32c.value(out) != struct.unpack("<I", tail)[0]:
            raise VhError(
                f"cannot read rows {start}:{stop} (crc32c checksum mismatch)",
                path=self.path,
                field=schema.EMB,
            )
        return out[: stop - start]

    def _scratch(self) -> np.ndarray:
        buf = getattr(self._local, "scratch", None)
        if buf is None:
            buf = np.empty((_TAKE_CHUNKS_PER_READ * self.chunk_rows, self.d), dtype=self.dtype)
            self._local.scratch = buf
        return buf

    def take(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``idx`` of emb, in the order given; each needed chunk is read once.

        Args:
            idx: integer ``(K,)`` row indices, any order, repeats allowed.
            out: optional preallocated ``(K, D)`` array of the emb dtype.

        Returns:
            ``(K, D)`` array: row ``i`` is emb row ``idx[i]``.
        """
        idx = np.asarray(idx)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise VhError(
                f"idx must be a 1-D integer array, got {idx.dtype} {idx.shape}", field="idx"
            )
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise VhError(f"row index outside 0:{self.n}", path=self.path, field="idx")
        out = self._out(idx.size, out)
        chunk = idx // self.chunk_rows
        order = np.argsort(chunk, kind="stable")
        needed = np.unique(chunk)
        scratch = self._scratch()
        for first, last in _chunk_runs(needed, _TAKE_CHUNKS_PER_READ):
            start = first * self.chunk_rows
            stop = min((last + 1) * self.chunk_rows, self.n)
            self._read_into(start, stop, scratch[: stop - start])
            lo, hi = np.searchsorted(chunk[order], [first, last + 1])
            sel = order[lo:hi]  # positions in idx whose rows lie in these chunks
            out[sel] = scratch[idx[sel] - start]
        return out

    def iter_blocks(
        self, block_rows: int | None = None, *, reuse: bool = False
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Iterate over emb in row order, whole chunks at a time.

        Args:
            block_rows: rows per block, rounded up to whole chunks (default: one chunk).
            reuse: yield the same buffer every time (faster; each block is overwritten by the
                next, so copy what you keep).

        Yields:
            ``(start, stop, block)`` with block ``(stop - start, D)``.
        """
        per = self.chunk_rows * max(1, -(-(block_rows or self.chunk_rows) // self.chunk_rows))
        buf = np.empty((min(per, self.n), self.d), dtype=self.dtype) if reuse else None
        for start in range(0, self.n, per):
            stop = min(start + per, self.n)
            out = buf[: stop - start] if reuse else None
            yield start, stop, self.read_rows(start, stop, out=out)


def _direct_layout(emb: Path, chunk_rows: int, d: int) -> bool:
    """Whether emb's chunk files can be read directly: this schema's codecs (little-endian raw
    bytes, then a crc32c), default ``/`` chunk keys, whole-width chunks, a local folder."""
    try:
        meta = json.loads((emb / "zarr.json").read_text())
        codecs = [(c.get("name"), c.get("configuration", {})) for c in meta["codecs"]]
        key = meta["chunk_key_encoding"]
        shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False  # zarr reads (and refuses) what this does not recognise
    return (
        codecs == [("bytes", {"endian": "little"}), ("crc32c", {})]
        and key.get("name") == "default"
        and key.get("configuration", {}).get("separator") == "/"
        and shape == [chunk_rows, d]
        and not meta.get("storage_transformers")
    )


def _read_full(f, view: memoryview) -> int:
    """``readinto`` until ``view`` is full or the file ends; returns the bytes read."""
    got = 0
    while got < len(view):
        k = f.readinto(view[got:])
        if not k:
            break
        got += k
    return got


def _chunk_runs(chunks: np.ndarray, max_len: int) -> Iterator[tuple[int, int]]:
    """Split sorted unique chunk indices into runs of consecutive ones, at most max_len long."""
    if chunks.size == 0:
        return
    breaks = np.flatnonzero(np.diff(chunks) != 1) + 1
    for run in np.split(chunks, breaks):
        for i in range(0, run.size, max_len):
            part = run[i : i + max_len]
            yield int(part[0]), int(part[-1])
