"""The fingerprint sees what the reader sees (issue 10, item 3).

metadata.db in SQLite WAL mode keeps a committed update in ``metadata.db-wal`` until a
checkpoint: SQLite (and so the dataset reader) reads the update, while the main file's bytes
are unchanged. A fingerprint of the main file alone would call a stale cache complete; the
fingerprint hashes the contents as SQLite reads them instead, which also stays the same when
only the layout changes (checkpoint, VACUUM, row order).
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import TINY, assert_one_line_error, invoke, snapshot

from vh.cache import fingerprint as fp
from vh.errors import VhError
from vh.extract.dataset import open_dataset


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def to_wal(db: Path) -> None:
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    con.close()


def open_writer(db: Path) -> sqlite3.Connection:
    """A connection that never checkpoints: its commits stay in ``<db>-wal`` while it is open."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_autocheckpoint=0")
    return con


def test_a_committed_update_still_in_the_wal_is_refused(tiny, tmp_path):
    ds, cache = tmp_path / "ds", tmp_path / "cache"
    shutil.copytree(tiny["ds"], ds)
    db = ds / "metadata.db"
    to_wal(db)
    extract = [
        "extract",
        "--dataset",
        ds,
        "--init",
        tiny["trunk"],
        "--out",
        cache,
        "--config",
        TINY,
    ]
    r = invoke(extract)
    assert r.exit_code == 0, r.output
    first = int(open_dataset(ds).runs.id[0])
    score = int(open_dataset(ds).runs.final_score[0])
    main_bytes, cache_before = sha(db), snapshot(cache)

    writer = open_writer(db)
    try:
        writer.execute("UPDATE runs SET max_score = max_score + 4 WHERE id = ?", (first,))
        writer.commit()
        # the update is committed, only in the -wal: the main file's bytes did not change,
        # and the dataset reader sees the new score
        assert (db.parent / "metadata.db-wal").stat().st_size > 0
        assert sha(db) == main_bytes
        assert int(open_dataset(ds).runs.final_score[0]) == score + 4

        r = invoke(extract)
    finally:
        writer.close()
    assert r.exit_code == 3, r.output
    assert_one_line_error(r, "fingerprint", "metadata.db")
    assert snapshot(cache) == cache_before


@pytest.fixture()
def wal_db(tmp_path) -> Path:
    """A small WAL-mode database with runs and session tables, checkpointed."""
    db = tmp_path / "a" / "metadata.db"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, steps INTEGER, max_score INTEGER)")
    con.executemany("INSERT INTO runs VALUES (?, ?, ?)", [(i, 10 * i, 4 * i) for i in range(50)])
    con.execute("CREATE TABLE session (meta_key TEXT PRIMARY KEY, meta_value TEXT)")
    con.execute("INSERT INTO session VALUES ('player', 'greedy')")
    con.execute("CREATE TABLE notes (k INTEGER PRIMARY KEY, v)")  # v: no type affinity
    con.execute("INSERT INTO notes VALUES (1, 70)")
    con.commit()
    con.close()
    to_wal(db)
    return db


def test_the_content_hash_follows_the_contents_not_the_layout(wal_db, tmp_path):
    before = fp.sqlite_content_sha256(wal_db)
    writer = open_writer(wal_db)
    try:
        writer.execute("UPDATE runs SET max_score = 999 WHERE id = 7")
        writer.commit()
        in_wal = fp.sqlite_content_sha256(wal_db)
        # a copy of the main file alone is the database without the update
        alone = tmp_path / "alone" / "metadata.db"
        alone.parent.mkdir()
        shutil.copy(wal_db, alone)
        assert fp.sqlite_content_sha256(alone) == before
        # main file + -wal, no -shm: SQLite rebuilds the index and reads the update
        pair = tmp_path / "pair" / "metadata.db"
        pair.parent.mkdir()
        shutil.copy(wal_db, pair)
        shutil.copy(wal_db.with_name("metadata.db-wal"), pair.with_name("metadata.db-wal"))
        assert fp.sqlite_content_sha256(pair) == in_wal
        writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        checkpointed = fp.sqlite_content_sha256(wal_db)
    finally:
        writer.close()
    assert in_wal != before
    assert checkpointed == in_wal  # the same contents, now in the main file

    # the same rows written in another order into a fresh rollback-journal file, vacuumed
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE session (meta_key TEXT PRIMARY KEY, meta_value TEXT)")
    con.execute("INSERT INTO session VALUES ('player', 'greedy')")
    con.execute("CREATE TABLE notes (k INTEGER PRIMARY KEY, v)")
    con.execute("INSERT INTO notes VALUES (1, 70)")
    con.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, steps INTEGER, max_score INTEGER)")
    rows = [(i, 10 * i, 999 if i == 7 else 4 * i) for i in reversed(range(50))]
    con.executemany("INSERT INTO runs VALUES (?, ?, ?)", rows)
    con.commit()
    con.execute("VACUUM")
    con.close()
    assert sha(other) != sha(wal_db)
    assert fp.sqlite_content_sha256(other) == in_wal


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE notes SET v = '70'",  # the text '70' is not the integer 70
        "UPDATE notes SET v = 70.0",  # nor is the real 70.0
        "UPDATE session SET meta_value = CAST('greedy' AS BLOB)",  # a blob is not text
        "UPDATE runs SET max_score = 29 WHERE id = 7",
        "DELETE FROM runs WHERE id = 49",
        "ALTER TABLE runs RENAME COLUMN steps TO num_moves",
        "CREATE TABLE extra (x)",
    ],
)
def test_every_change_a_reader_could_see_changes_the_hash(wal_db, change):
    before = fp.sqlite_content_sha256(wal_db)
    writer = open_writer(wal_db)
    try:
        if "70" in change:  # the change is of type alone: the value compares equal to before
            assert writer.execute("SELECT v = 70 FROM notes").fetchone() == (1,)
        writer.execute(change)
        writer.commit()
        assert fp.sqlite_content_sha256(wal_db) != before
    finally:
        writer.close()


def test_writes_that_leave_the_same_values_keep_the_hash(wal_db):
    before = fp.sqlite_content_sha256(wal_db)
    writer = open_writer(wal_db)
    try:
        writer.execute("INSERT INTO runs VALUES (50, 500, 200)")
        writer.commit()
        writer.execute("DELETE FROM runs WHERE id = 50")
        # an INTEGER column stores the text '70' as the integer 70: no change a reader sees
        writer.execute("UPDATE runs SET steps = '70' WHERE id = 7")
        writer.commit()
        assert wal_db.with_name("metadata.db-wal").stat().st_size > 0  # pages were rewritten
        assert fp.sqlite_content_sha256(wal_db) == before
    finally:
        writer.close()


def test_file_entries_hash_databases_by_content_and_other_files_by_bytes(wal_db):
    npy = wal_db.parent / "steps.npy"
    npy.write_bytes(b"\x93NUMPY not really")
    entries = fp.file_entries([npy, wal_db], root=wal_db.parent)
    assert entries == {
        "steps.npy": {"size": npy.stat().st_size, "sha256": sha(npy)},
        "metadata.db": {"sqlite_content_sha256": fp.sqlite_content_sha256(wal_db)},
    }
    assert fp.file_entries([npy, wal_db], root=wal_db.parent) == entries  # stable


def test_an_unreadable_database_is_one_error_naming_it(tmp_path):
    bad = tmp_path / "metadata.db"
    bad.write_bytes(fp.SQLITE_MAGIC + b"\x00" * 84)  # the header alone: not a database
    with pytest.raises(VhError) as e:
        fp.sqlite_content_sha256(bad)
    assert e.value.path == str(bad)
