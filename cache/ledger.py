"""The ledger: one small JSON record per finished unit, written atomically.

A record is written to a temp file, fsynced, moved into place with ``os.replace`` and the
folder fsynced, so after a crash a record is either absent or whole. A unit without a valid
record is not done, whatever the arrays hold. Leftover temp files (ours: ``*.tmp``; zarr's:
``*.partial``) are removed on resume.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vh import durable
from vh.cache import schema

TMP_SUFFIXES = (".tmp", ".partial")

# the durable-io primitives the cache code calls through this module (one implementation)
FAILPOINT_ENV = durable.FAILPOINT_ENV
failpoint = durable.kill_point  # VH_FAILPOINT=name:k SIGKILLs there (tests/test_extract_kill.py)
fsync_path = durable.fsync_path
fsync_tree = durable.fsync_tree


def atomic_write_json(path: str | os.PathLike, obj: dict) -> None:
    """Write ``obj`` as JSON to ``path`` so that readers see either nothing or all of it.

    Kill points ``record:tmp`` and ``record:done`` (tests/test_extract_kill.py).

    Args:
        path: destination file; its folder must exist.
        obj: a JSON-able mapping.
    """
    durable.atomic_write_json(path, obj, sort_keys=True, point="record")


def ledger_dir(cache: str | os.PathLike) -> Path:
    return Path(cache) / schema.LEDGER_DIR


def write_record(cache: str | os.PathLike, name: str, record: dict) -> None:
    """Atomically write ledger record ``name`` (e.g. ``unit-00000003``) of ``cache``."""
    d = ledger_dir(cache)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(d / f"{name}.json", record)


def read_record(cache: str | os.PathLike, name: str) -> dict | None:
    """Ledger record ``name``, or None when absent or not a valid JSON object (= not done)."""
    return durable.try_read_json(ledger_dir(cache) / f"{name}.json")


def read_json(path: str | os.PathLike, *, what: str) -> dict:
    """Read a JSON object the cache needs, raising VhError naming the file when it is bad."""
    return durable.read_json(path, what)


def unit_is_done(rec: dict | None, unit: int, start: int, stop: int, digest: str) -> bool:
    """Whether a unit record proves the unit finished for this fingerprint."""
    return (
        rec is not None
        and rec.get("unit") == unit
        and rec.get("start") == start
        and rec.get("stop") == stop
        and rec.get("fingerprint_digest") == digest
        and isinstance(rec.get("crc32c"), int)
    )


def done_units(cache: str | os.PathLike, n: int, chunk_rows: int, digest: str) -> np.ndarray:
    """Which embedding units of ``cache`` have a valid record for fingerprint ``digest``.

    Returns:
        bool ``(n_units,)``.
    """
    names = _record_names(cache)
    done = np.zeros(schema.n_units(n, chunk_rows), dtype=bool)
    for u in range(done.size):
        name = schema.unit_record_name(u)
        if name in names:
            start, stop = schema.unit_range(u, n, chunk_rows)
            done[u] = unit_is_done(read_record(cache, name), u, start, stop, digest)
    return done


def _record_names(cache: str | os.PathLike) -> set[str]:
    # one listing instead of a failed open per missing unit
    try:
        return {p[:-5] for p in os.listdir(ledger_dir(cache)) if p.endswith(".json")}
    except FileNotFoundError:
        return set()


def remove_temp_files(cache: str | os.PathLike) -> int:
    """Delete temp files a killed writer left anywhere under ``cache``; returns how many."""
    count = 0
    for root, _dirs, files in os.walk(cache):
        for f in files:
            if f.endswith(TMP_SUFFIXES):
                Path(root, f).unlink(missing_ok=True)
                count += 1
    return count
