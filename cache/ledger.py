"""The ledger: one small JSON record per finished unit, written atomically.

A record is written to a temp file, fsynced, moved into place with ``os.replace`` and the
folder fsynced, so after a crash a record is either absent or whole. A unit without a valid
record is not done, whatever the arrays hold. Leftover temp files (ours: ``*.tmp``; zarr's:
``*.partial``) are removed on resume.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import numpy as np

from vh.cache import schema
from vh.errors import VhError

TMP_SUFFIXES = (".tmp", ".partial")
FAILPOINT_ENV = "VH_FAILPOINT"
_hits: Counter = Counter()


def failpoint(name: str) -> None:
    """Crash-test hook: SIGKILL this process at the k-th pass through point ``name``.

    Set ``VH_FAILPOINT=name:k`` (tests/test_extract_kill.py does) to die exactly there, as a
    kill -9 or a power cut would: no cleanup, no flush. Unset, this is one dict lookup.
    """
    spec = os.environ.get(FAILPOINT_ENV)
    if not spec:
        return
    point, _, k = spec.rpartition(":")
    if point == name:
        _hits[name] += 1
        if _hits[name] == int(k):
            os.kill(os.getpid(), signal.SIGKILL)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries (a rename, a new file), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """Flush every file and folder under ``root`` (zarr's metadata and column chunks)."""
    for folder, _dirs, files in os.walk(root):
        for f in files:
            fsync_path(Path(folder, f))
        fsync_path(folder)


def atomic_write_json(path: str | os.PathLike, obj: dict) -> None:
    """Write ``obj`` as JSON to ``path`` so that readers see either nothing or all of it.

    Args:
        path: destination file; its folder must exist.
        obj: a JSON-able mapping.
    """
    path = Path(path)
    # pid in the temp name: two writers of different records never share a temp file
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    data = json.dumps(obj, sort_keys=True, indent=1).encode()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    failpoint("record:tmp")
    os.replace(tmp, path)
    fsync_path(path.parent)
    failpoint("record:done")


def ledger_dir(cache: str | os.PathLike) -> Path:
    return Path(cache) / schema.LEDGER_DIR


def write_record(cache: str | os.PathLike, name: str, record: dict) -> None:
    """Atomically write ledger record ``name`` (e.g. ``unit-00000003``) of ``cache``."""
    d = ledger_dir(cache)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(d / f"{name}.json", record)


def read_record(cache: str | os.PathLike, name: str) -> dict | None:
    """Ledger record ``name``, or None when absent or not valid JSON (= not done)."""
    p = ledger_dir(cache) / f"{name}.json"
    try:
        with open(p, "rb") as f:
            rec = json.loads(f.read())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def read_json(path: str | os.PathLike, *, what: str) -> dict:
    """Read a JSON object the cache needs, raising VhError naming the file when it is bad."""
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read())
    except FileNotFoundError:
        raise VhError(f"{what} not found", path=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VhError(f"{what} is not valid JSON ({e})", path=path) from None
    if not isinstance(obj, dict):
        raise VhError(f"{what} is not a JSON object", path=path)
    return obj


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
