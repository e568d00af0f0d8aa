"""Fingerprints: what a cache was computed from, so a changed input is refused, never reused.

A fingerprint is a nested JSON dict with three parts:

- ``trunk``: the trunk kind, its config and the sha256 of its weights (or the random-init seed),
- ``inputs``: for every input file, by name: its byte size and sha256; for an SQLite database
  (metadata.db) the sha256 of its contents as SQLite reads them instead (see
  :func:`sqlite_content_sha256`: a committed update may still sit in ``metadata.db-wal``),
- ``extract``: the extract settings that change the bytes (dtype, gamma, chunk_rows, ...).

Its digest (sha256 of the canonical JSON) goes into every ledger record, so a record from
other inputs never counts as done. :func:`differences` says in words which entries differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vh.errors import VhError

_HASH_BLOCK = 8 << 20  # streamed in 8 MiB blocks: hashes a dataset of any size in flat memory
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file
_DB_TIMEOUT_S = 5.0  # how long to wait for a writer's lock before giving up


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def is_sqlite(path: str | os.PathLike) -> bool:
    """Whether a file is an SQLite 3 database (by its header, whatever its name)."""
    with open(path, "rb") as f:
        return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def sqlite_content_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of an SQLite database's contents, as SQLite reads them.

    The bytes of the main file are not what a reader sees: in WAL mode a committed update
    may live in ``<db>-wal`` until a checkpoint (and a checkpoint changes the main file but
    not the contents). So this hashes what SQLite returns, in one read transaction of a
    read-only connection: every table's name, column names and rows, and every view's SQL.
    Rows are hashed one by one and their digests sorted, so neither row order nor rowids
    (which VACUUM may renumber) nor page layout change the result; the same contents give
    the same hash.

    Raises:
        VhError: the database cannot be read (naming it).
    """
    p = Path(path)
    try:
        conn = sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True, timeout=_DB_TIMEOUT_S)
    except sqlite3.Error as e:
        raise VhError(f"cannot open to fingerprint it ({e})", path=p) from None
    try:
        conn.execute("BEGIN")  # one snapshot of every table
        return _hash_schema_objects(conn)
    except sqlite3.Error as e:
        raise VhError(f"cannot read to fingerprint it ({e})", path=p) from None
    finally:
        conn.close()


def _hash_schema_objects(conn: sqlite3.Connection) -> str:
    """sha256 over the tables (names, columns, sorted row digests) and views (their SQL)."""
    h = hashlib.sha256()
    conn.text_factory = str
    objects = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE type IN ('table', 'view') "
        "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name"
    ).fetchall()
    # row values as tagged bytes: text and blobs never hash alike, and text that is not
    # UTF-8 is hashed rather than refused (a table vh never reads may hold some)
    conn.text_factory = _tagged_text
    for kind, name, sql in objects:
        h.update(repr((kind, name)).encode())
        if kind == "view" or (sql or "").lstrip().upper().startswith("CREATE VIRTUAL"):
            h.update(repr(sql).encode())  # its rows follow from its SQL and the tables
            continue
        cur = conn.execute('SELECT * FROM "{}"'.format(name.replace('"', '""')))
        h.update(repr([d[0] for d in cur.description]).encode())
        rows = sorted(hashlib.sha256(repr(row).encode()).digest() for row in cur)
        h.update(len(rows).to_bytes(8, "little"))
        h.update(b"".join(rows))
    return h.hexdigest()


def _tagged_text(raw: bytes) -> tuple[str, bytes]:
    return ("text", raw)


def _entry(path: Path) -> dict:
    """One input's fingerprint entry: size and sha256, or an SQLite database's contents."""
    if is_sqlite(path):
        return {"sqlite_content_sha256": sqlite_content_sha256(path)}
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def file_entries(
    files: Iterable[str | os.PathLike], root: str | os.PathLike | None = None, threads: int = 4
) -> dict[str, dict]:
    """Name, size and sha256 of each file (hashed on a few threads: hashlib releases the GIL).

    An SQLite database is fingerprinted by what SQLite reads from it, not by its main file's
    bytes (:func:`sqlite_content_sha256`).

    Args:
        files: the input files.
        root: names are relative to this folder (the file name alone when None).
        threads: hashing threads.

    Returns:
        ``{name: {"size": int, "sha256": str}}``, or ``{name: {"sqlite_content_sha256": str}}``
        for a database.
    """
    paths = [Path(f) for f in files]
    names = [str(p.relative_to(root)) if root is not None else p.name for p in paths]
    with ThreadPoolExecutor(max(1, min(threads, len(paths)))) as pool:
        entries = list(pool.map(_entry, paths))
    return dict(zip(names, entries, strict=True))


def make_fingerprint(trunk: dict, inputs: dict, extract: dict) -> dict:
    """Assemble a fingerprint from its three parts (see the module docstring)."""
    return {"trunk": trunk, "inputs": inputs, "extract": extract}


def digest(fp: dict) -> str:
    """Hex sha256 of the canonical JSON of a fingerprint."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def _flatten(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def _short(v: object) -> str:
    s = json.dumps(v)
    # sha256 hex digests are long: twelve characters tell two of them apart
    return s[:13] + '…"' if isinstance(v, str) and len(v) == 64 else s


def _entry_name(key: str) -> str:
    # "inputs.steps-00001.npy.size" -> "steps-00001.npy size"; "trunk.weights_sha256" ->
    # "trunk weights_sha256": the words a user recognises
    part, _, rest = key.partition(".")
    if part == "inputs" and "." in rest:
        name, _, attr = rest.rpartition(".")
        return f"input file {name} {attr}"
    return f"{part} {rest}" if rest else part


def differences(cached: dict, expected: dict) -> list[str]:
    """Every entry that differs between two fingerprints, in words.

    Returns:
        e.g. ``["trunk weights_sha256 differs: cache \"1a2b…\" vs input \"3c4d…\"",
        "input file steps-00002.npy missing from the cache"]``; empty when they agree.
    """
    a, b = _flatten(cached), _flatten(expected)
    out = []
    for key in sorted(set(a) | set(b)):
        name = _entry_name(key)
        if key not in a:
            out.append(f"{name} missing from the cache")
        elif key not in b:
            out.append(f"{name} not among the inputs")
        elif a[key] != b[key]:
            out.append(f"{name} differs: cache {_short(a[key])} vs input {_short(b[key])}")
    return out


def check(cached: dict, expected: dict, path: str | os.PathLike) -> None:
    """Raise VhError (code 3) naming what differs when two fingerprints disagree."""
    diffs = differences(cached, expected)
    if diffs:
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise VhError(
            "cache was computed from other inputs: "
            + "; ".join(diffs[:3])
            + more
            + " (vh extract --overwrite recomputes it)",
            path=path,
            field="fingerprint",
            code=3,
        )


# what identifies a trunk's weights: their file's hash, or the seed of random ones
_WEIGHTS_KEYS = ("weights_sha256", "seed")


def trunk_differences(recorded: dict, loaded: dict, *, with_config: bool = True) -> list[str]:
    """Whether two trunk fingerprints name the same trunk: what differs, in words.

    The one "same trunk" check: a worker of an extract against rank 0's trunk, and ``vh
    export`` against the trunk a head's cache was extracted with.

    Args:
        recorded: a trunk fingerprint as recorded (a cache's ``fingerprint["trunk"]``).
        loaded: :attr:`vh.extract.trunk.LoadedTrunk.fingerprint` of the trunk at hand.
        with_config: compare every entry (kind, config, weights); without, only what the
            weights are (their hash, or the seed of random ones), for trunks whose
            ``config.json`` may carry other blocks (an exported init dir's ``value_head``).

    Returns:
        e.g. ``["trunk weights_sha256 differs: cache \"1a2b…\" vs input \"3c4d…\""]``; empty
        when they name the same trunk.
    """
    if not with_config:
        recorded = {k: recorded.get(k) for k in _WEIGHTS_KEYS}
        loaded = {k: loaded.get(k) for k in _WEIGHTS_KEYS}
    return differences({"trunk": recorded}, {"trunk": loaded})
