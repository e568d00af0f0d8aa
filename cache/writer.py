"""Writing a cache: create the arrays, write whole units with their ledger records, finish.

The life of a cache (DESIGN §3)::

    init_cache(...)            arrays, runs table, root attributes; ledger/init.json last
    w.write_columns(cols)      the per-state columns, one unit (ledger/columns.json)
    w.write_unit(u, block)     one emb chunk, fsynced, then ledger/unit-XXXXXXXX.json
    w.finish()                 every record checked against its chunk, then complete.json

A unit is exactly one emb chunk, so each chunk is written once, whole, by one process.
:func:`write_cache_from_arrays` runs all of it on in-memory arrays (tests, planted caches).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import crc32c
import numpy as np
import zarr

import vh
from vh import durable
from vh.cache import fingerprint as fpmod
from vh.cache import ledger, schema
from vh.errors import VhError

# what init_cache removes (everything of a cache except a held lock), in an order that keeps
# an interrupted removal safe: first what says "done", then the arrays
_CACHE_ENTRIES = (
    schema.MARKER,
    schema.LEDGER_DIR,
    "zarr.json",
    schema.EMB,
    schema.COLUMNS,
    schema.RUNS,
)


def _legacy_cache(path: Path) -> bool:
    """A cache of a vh before ownership markers: its root zarr.json carries vh's attributes."""
    rec = durable.try_read_json(path / "zarr.json")
    attrs = rec.get("attributes") if rec else None
    return isinstance(attrs, dict) and "vh_version" in attrs and "fingerprint" in attrs


def check_owned_cache(path: str | os.PathLike) -> None:
    """Refuse to clear a folder that is not a cache vh made, or that holds any other file.

    A cache made before ownership markers is accepted when its zarr.json is vh's; one killed
    before its zarr.json existed is refused (delete it yourself).
    """
    durable.check_owned(
        path,
        "cache",
        files=(*_CACHE_ENTRIES, schema.LOCK, *(f"*{x}" for x in ledger.TMP_SUFFIXES)),
        legacy=_legacy_cache,
        scratch=(schema.LOCK,),
    )


def check_destination(
    path: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], *, overwrite: bool
) -> None:
    """What ``vh extract`` checks before it takes the lock or creates anything at ``path``.

    Refuses a cache folder that is an input or holds one (``inputs``: role -> path), and, when
    its contents would be deleted (``overwrite``, or an unfinished creation), one vh did not
    make as a cache.
    """
    durable.check_not_input(path, inputs)
    if overwrite or not is_initialised(path):
        check_owned_cache(path)


def clear_cache_dir(path: str | os.PathLike) -> None:
    """Remove a cache's contents (not its lock or marker), also a half-created one.

    Refuses a folder vh did not make as a cache, or holding anything a cache does not (the
    user's files are never deleted).
    """
    p = Path(path)
    check_owned_cache(p)
    if not p.exists():
        return
    durable.claim(p, "cache")  # first: a removal cut short leaves a folder still known as ours
    for name in _CACHE_ENTRIES:
        q = p / name
        if q.is_dir():
            shutil.rmtree(q)
        elif q.exists():
            q.unlink()
    ledger.remove_temp_files(p)


def is_initialised(path: str | os.PathLike) -> bool:
    """Whether ``init_cache`` finished for this cache (its init record exists)."""
    return ledger.read_record(path, schema.INIT_RECORD) is not None


def init_cache(
    path: str | os.PathLike,
    *,
    n: int,
    d: int,
    dtype: str,
    chunk_rows: int,
    pooling: str,
    columns: dict[str, np.dtype],
    runs: dict[str, np.ndarray],
    fingerprint: dict,
    extract_config: dict,
    extra_attrs: dict | None = None,
) -> CacheWriter:
    """Create an empty cache: arrays, root attributes and the runs table; ledger/init.json last.

    Any previous contents (except the lock) are removed first, so a creation that was killed
    halfway is simply redone.

    Args:
        path: the cache folder (created if absent).
        n: rows; d: embedding width; dtype: ``float16`` or ``float32``.
        chunk_rows: rows per emb chunk = per work unit.
        pooling: how a state became a vector (``mean`` of the trunk's tokens, ``onehot``, ...).
        columns: name -> dtype of each per-state column to create.
        runs: the runs table, name -> array (sorted by ``id`` here).
        fingerprint: see :mod:`vh.cache.fingerprint`.
        extract_config: the resolved extract config, recorded as is.
        extra_attrs: more root attributes.

    Returns:
        A :class:`CacheWriter` on the new cache.
    """
    if dtype not in schema.EMB_DTYPES:
        raise VhError(f"emb dtype must be one of {schema.EMB_DTYPES}", field="dtype")
    if chunk_rows <= 0:
        raise VhError("must be positive", field="chunk_rows")
    clear_cache_dir(path)
    durable.claim(path, "cache")  # first: a creation killed from here on is redone, not refused
    attrs = {
        "schema_version": schema.SCHEMA_VERSION,
        "n": n,
        "d": d,
        "dtype": dtype,
        "chunk_rows": chunk_rows,
        "n_units": schema.n_units(n, chunk_rows),
        "pooling": pooling,
        "columns": list(columns),
        "extract_config": extract_config,
        "vh_version": vh.__version__,
        "fingerprint": fingerprint,
        "fingerprint_digest": fpmod.digest(fingerprint),
        **(extra_attrs or {}),
    }
    group = zarr.create_group(store=str(path), attributes=attrs, zarr_format=3)
    _create_arrays(group, n, d, dtype, chunk_rows, columns)
    _write_runs(group, runs)
    ledger.fsync_tree(path)  # zarr does not fsync: metadata durable before the init record
    ledger.failpoint("init:arrays")
    ledger.write_record(
        path,
        schema.INIT_RECORD,
        {
            "schema_version": schema.SCHEMA_VERSION,
            "fingerprint_digest": attrs["fingerprint_digest"],
        },
    )
    return CacheWriter(path)


def _create_arrays(group: zarr.Group, n: int, d: int, dtype: str, chunk_rows: int,
                   columns: dict[str, np.dtype]) -> None:  # fmt: skip
    """The empty ``emb`` array and one array per per-state column."""
    codecs = schema.emb_codecs()
    # fill NaN: an unwritten chunk read by mistake (allow_incomplete) is visibly not data;
    # write_empty_chunks: every unit leaves a chunk file that finish() can check
    group.create_array(
        schema.EMB,
        shape=(n, d),
        chunks=(max(1, min(chunk_rows, n)), d),
        dtype=dtype,
        fill_value=np.nan,
        config={"write_empty_chunks": True},
        dimension_names=("row", "dim"),
        **codecs,
    )
    col_chunk = max(1, min(n, schema.COLUMN_CHUNK_ROWS))
    for name, dt in columns.items():
        group.create_array(
            f"{schema.COLUMNS}/{name}",
            shape=(n,),
            chunks=(col_chunk,),
            dtype=np.dtype(dt),
            fill_value=0,
            config={"write_empty_chunks": True},
            **codecs,
        )


def _write_runs(group: zarr.Group, runs: dict[str, np.ndarray]) -> None:
    lengths = {len(np.asarray(v)) for v in runs.values()}
    if len(lengths) > 1:
        raise VhError(f"runs table columns differ in length: {sorted(lengths)}", field="runs")
    order = np.argsort(np.asarray(runs["id"]), kind="stable") if "id" in runs else None
    for name, values in runs.items():
        v = np.asarray(values)
        v = v if order is None else v[order]
        dt = schema.RUN_DTYPES.get(name, v.dtype)
        group.create_array(
            f"{schema.RUNS}/{name}",
            data=v.astype(dt),
            chunks=(max(1, len(v)),),
            **schema.emb_codecs(),
        )


def _write_chunk_file(path: Path, parts: list) -> None:
    """Write ``parts`` (buffers) as the file ``path``, then fdatasync it (kill point
    ``unit:written`` between the two, as when zarr wrote it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for part in parts:
            view = memoryview(part).cast("B")
            while view:  # os.write may write less than asked (signals, >2 GiB)
                view = view[os.write(fd, view) :]
        ledger.failpoint("unit:written")
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _fill_bytes(dtype: str, count: int) -> bytes:
    return np.full(count, np.nan, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


class CacheWriter:
    """Writes units of an initialised cache and finishes it.

    Args:
        path: a cache folder on which :func:`init_cache` completed.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not is_initialised(self.path):
            raise VhError("cache was not initialised (no ledger/init.json)", path=self.path)
        self.group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        self.attrs = dict(self.group.attrs)
        schema.check_attrs(self.path, self.attrs)
        self.n, self.d = self.attrs["n"], self.attrs["d"]
        self.chunk_rows, self.n_units = self.attrs["chunk_rows"], self.attrs["n_units"]
        self.dtype = np.dtype(self.attrs["dtype"]).newbyteorder("<")
        self.digest = self.attrs["fingerprint_digest"]
        self.emb = self.group[schema.EMB]

    # ------------------------------------------------------------------ state

    def done_units(self) -> np.ndarray:
        """bool ``(n_units,)``: units with a valid ledger record."""
        return ledger.done_units(self.path, self.n, self.chunk_rows, self.digest)

    def pending_units(self) -> list[int]:
        """Units to (re)compute: no valid ledger record, or a chunk that no longer matches it."""
        done = self.done_units()
        for u in np.flatnonzero(done):
            done[u] = self._check_chunk(int(u)) is None
        return np.flatnonzero(~done).tolist()

    def columns_done(self) -> bool:
        rec = ledger.read_record(self.path, schema.COLUMNS_RECORD)
        return rec is not None and rec.get("fingerprint_digest") == self.digest

    def unit_range(self, unit: int) -> tuple[int, int]:
        return schema.unit_range(unit, self.n, self.chunk_rows)

    # ------------------------------------------------------------------ writing

    def write_columns(self, columns: dict[str, np.ndarray]) -> None:
        """Write every per-state column (whole), then their ledger record.

        Args:
            columns: name -> ``(N,)`` array, for exactly the columns the cache was created with.
        """
        if set(columns) != set(self.attrs["columns"]):
            raise VhError(
                f"columns {sorted(columns)} differ from the schema's "
                f"{sorted(self.attrs['columns'])}",
                path=self.path,
                field="columns",
            )
        hashes = {}
        for name, values in columns.items():
            arr = self.group[f"{schema.COLUMNS}/{name}"]
            v = np.ascontiguousarray(values, dtype=arr.dtype.newbyteorder("<"))
            if v.shape != (self.n,):
                raise VhError(
                    f"expected shape ({self.n},), got {v.shape}",
                    path=self.path,
                    field=f"columns/{name}",
                )
            arr[:] = v
            hashes[name] = hashlib.sha256(v).hexdigest()  # reads v in place (no copy)
        ledger.fsync_tree(self.path / schema.COLUMNS)
        ledger.failpoint("columns:written")
        ledger.write_record(
            self.path, schema.COLUMNS_RECORD, {"sha256": hashes, "fingerprint_digest": self.digest}
        )

    def write_unit(self, unit: int, block: np.ndarray) -> dict:
        """Write one whole emb chunk, fsync it, then its ledger record.

        The chunk file is written here directly, not through zarr: the exact bytes zarr's codec
        chain (raw little-endian bytes + CRC32C trailer, :func:`schema.emb_codecs`) would
        store, from ``block``'s own memory. Zarr's path made three more copies of every chunk
        (encode, trailer, ``tobytes``) into fresh memory, which on these VMs runs below disk
        speed (MEASUREMENTS.md); tests/test_cache.py checks the bytes against zarr's. Safe to
        call from several threads for different units.

        Args:
            unit: the unit (= chunk) index.
            block: ``(stop - start, D)`` rows of the unit, any float dtype (cast to the cache's;
                no copy when it already is little-endian and C-contiguous in that dtype).

        Returns:
            The ledger record written.
        """
        start, stop = self.unit_range(unit)
        b = np.ascontiguousarray(block, dtype=self.dtype)
        if b.shape != (stop - start, self.d):
            raise VhError(
                f"unit {unit} expects a block of shape {(stop - start, self.d)}, got {b.shape}",
                path=self.path,
                field=schema.EMB,
            )
        ledger.failpoint("unit:before")
        crc = crc32c.crc32c(b)  # reads the buffer in place (no copy)
        chunk_crc = self._chunk_crc(b, crc)
        chunk_file = self.path / schema.EMB / self.emb.metadata.encode_chunk_key((unit, 0))
        pad = (self.emb.chunks[0] - b.shape[0]) * self.d
        _write_chunk_file(
            chunk_file,
            [b, _fill_bytes(self.dtype, pad) if pad else b"", chunk_crc.to_bytes(4, "little")],
        )
        # the data (and the new chunk's folder entries) must be durable before the record
        for p in (chunk_file.parent, chunk_file.parent.parent):
            ledger.fsync_path(p)
        rec = {
            "unit": unit,
            "start": start,
            "stop": stop,
            "crc32c": crc,
            "chunk_crc32c": chunk_crc,
            "fingerprint_digest": self.digest,
        }
        ledger.write_record(self.path, schema.unit_record_name(unit), rec)
        return rec

    def _chunk_crc(self, block: np.ndarray, crc: int) -> int:
        # zarr pads the last chunk with the fill value before encoding; the chunk file's
        # trailer is the crc32c of those padded bytes, which finish() compares against
        pad = (self.emb.chunks[0] - block.shape[0]) * self.d
        return crc32c.crc32c(_fill_bytes(self.dtype, pad), crc) if pad else crc

    # ------------------------------------------------------------------ finishing

    def verify(self) -> list[str]:
        """Problems that keep the cache from being complete (empty = complete).

        Checks every unit's ledger record against its chunk file (size and the CRC32C trailer
        zarr stored), and the columns record. Reads 4 bytes per chunk, not the data.
        """
        problems = []
        if not self.columns_done():
            problems.append("the per-state columns were not written")
        done = self.done_units()
        if not done.all():
            missing = np.flatnonzero(~done)
            problems.append(
                f"{missing.size} of {done.size} units not done (first: {missing[:5].tolist()})"
            )
        for u in np.flatnonzero(done):
            problem = self._check_chunk(int(u))
            if problem:
                problems.append(problem)
        return problems

    def _check_chunk(self, unit: int) -> str | None:
        rec = ledger.read_record(self.path, schema.unit_record_name(unit))
        chunk_file = self.path / schema.EMB / self.emb.metadata.encode_chunk_key((unit, 0))
        size = self.emb.chunks[0] * self.d * self.dtype.itemsize + 4
        try:
            with open(chunk_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() != size:
                    return f"unit {unit}: chunk file has {f.tell()} bytes, expected {size}"
                f.seek(-4, os.SEEK_END)
                trailer = int.from_bytes(f.read(4), "little")
        except FileNotFoundError:
            return f"unit {unit}: ledger says done but its chunk file is missing"
        if trailer != rec["chunk_crc32c"]:
            return f"unit {unit}: chunk checksum differs from its ledger record"
        return None

    def finish(self) -> None:
        """Verify every unit, then write the completion marker (last)."""
        problems = self.verify()
        if problems:
            raise VhError(
                "cache cannot be finished: " + "; ".join(problems[:3]),
                path=self.path,
                field="ledger",
                code=3,
            )
        ledger.failpoint("finish:verified")
        ledger.atomic_write_json(
            self.path / schema.MARKER,
            {
                "fingerprint_digest": self.digest,
                "n": self.n,
                "n_units": self.n_units,
                "finished_unix": time.time(),
            },
        )


def write_cache_from_arrays(
    path: str | os.PathLike,
    emb: np.ndarray,
    columns: dict[str, np.ndarray],
    runs: dict[str, np.ndarray],
    *,
    attrs: dict | None = None,
    chunk_rows: int = schema.DEFAULT_CHUNK_ROWS,
) -> Path:
    """Write a complete, ledgered, marked cache of the real schema from in-memory arrays.

    For tests and planted caches: phase 2 and 3 cannot tell it from an extracted one.

    Args:
        path: the cache folder (replaced if it holds a cache).
        emb: ``(N, D)`` float16 or float32 embeddings.
        columns: name -> ``(N,)`` per-state column; known names (schema.COLUMN_DTYPES) are
            cast to their schema dtype, others keep theirs.
        runs: the runs table, name -> ``(R,)`` (``id``, ``steps``, ``highest_tile``,
            ``final_score``, ``seed``).
        attrs: root attributes to set or override (``fingerprint``, ``pooling``,
            ``extract_config``, anything else).
        chunk_rows: rows per emb chunk.

    Returns:
        The cache path.
    """
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.dtype.name not in schema.EMB_DTYPES:
        raise VhError(f"emb must be 2-D float16/float32, got {emb.dtype} {emb.shape}", field="emb")
    n, d = emb.shape
    attrs = dict(attrs or {})
    fp = attrs.pop(
        "fingerprint",
        fpmod.make_fingerprint(
            {"kind": "arrays"}, {}, {"emb_sha256": hashlib.sha256(emb.tobytes()).hexdigest()}
        ),
    )
    col_dtypes = {k: schema.COLUMN_DTYPES.get(k, np.asarray(v).dtype) for k, v in columns.items()}
    w = init_cache(
        path,
        n=n,
        d=d,
        dtype=emb.dtype.name,
        chunk_rows=chunk_rows,
        pooling=attrs.pop("pooling", "given"),
        columns=col_dtypes,
        runs=runs,
        fingerprint=fp,
        extract_config=attrs.pop("extract_config", {}),
        extra_attrs=attrs,
    )
    w.write_columns(columns)
    for u in range(w.n_units):
        start, stop = w.unit_range(u)
        w.write_unit(u, emb[start:stop])
    w.finish()
    return Path(path)
