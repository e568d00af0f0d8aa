"""The embedding cache: schema, ledger, writer, reader, fingerprints, lock."""

import hashlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import zarr

from vh.cache import fingerprint as fp
from vh.cache import ledger, schema
from vh.cache.lock import CacheLock
from vh.cache.reader import open_cache
from vh.cache.writer import CacheWriter, clear_cache_dir, init_cache, write_cache_from_arrays
from vh.errors import VhError

N, D, CHUNK = 1000, 12, 128  # 8 units, the last one partial (1000 = 7 * 128 + 104)


def _arrays(seed=0, dtype="float16"):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((N, D)).astype(dtype)
    run_id = np.repeat(np.arange(10), 100)
    cols = {
        "run_id": run_id.astype(np.uint32),
        "step_index": np.tile(np.arange(100), 10),
        "max_exp": rng.integers(1, 12, N),
        "reward": rng.random(N),
        "extra_flag": rng.integers(0, 2, N).astype(np.int16),
    }
    ids = rng.permutation(10)  # unsorted on purpose: the cache sorts the runs table by id
    runs = {
        "id": ids,
        "steps": np.full(10, 100),
        "highest_tile": 2 ** (ids + 5),
        "final_score": ids * 1000,
        "seed": ids + 7,
    }
    return emb, cols, runs


@pytest.fixture()
def cache(tmp_path):
    emb, cols, runs = _arrays()
    path = write_cache_from_arrays(tmp_path / "c", emb, cols, runs, chunk_rows=CHUNK)
    return path, emb, cols, runs


def test_root_attributes_and_schema(cache):
    path, emb, cols, runs = cache
    c = open_cache(path)
    assert (c.n, c.d, c.dtype) == (N, D, np.float16)
    for key in schema.ROOT_ATTRS:
        assert key in c.attrs
    assert c.attrs["n_units"] == 8 and c.attrs["chunk_rows"] == CHUNK
    assert c.attrs["fingerprint_digest"] == fp.digest(c.fingerprint)
    assert c.complete and c.done_units().all() and c.done_units().size == 8
    assert c.column_names == list(cols)
    # known columns take the schema dtype, others keep theirs
    assert c.column("run_id").dtype == np.int64 and c.column("reward").dtype == np.float32
    assert c.column("extra_flag").dtype == np.int16
    for name, values in cols.items():
        np.testing.assert_array_equal(c.column(name), values.astype(c.column(name).dtype))
    order = np.argsort(runs["id"])
    for name, values in runs.items():
        np.testing.assert_array_equal(c.runs[name], values[order])
    assert list(c.runs) == ["id", "steps", "highest_tile", "final_score", "seed"]


def test_read_rows_take_iter_blocks_match_numpy(cache):
    path, emb, _, _ = cache
    c = open_cache(path)
    np.testing.assert_array_equal(c.read_rows(0, N), emb)
    np.testing.assert_array_equal(c.read_rows(100, 300), emb[100:300])  # across a chunk edge
    out = np.empty((5, D), np.float16)
    assert c.read_rows(995, 1000, out=out) is out
    np.testing.assert_array_equal(out, emb[995:])
    rng = np.random.default_rng(1)
    idx = rng.integers(0, N, 700)  # unsorted, with repeats, touching every chunk
    np.testing.assert_array_equal(c.take(idx), emb[idx])
    np.testing.assert_array_equal(c.take(np.array([999, 0, 500])), emb[[999, 0, 500]])
    assert c.take(np.array([], dtype=np.int64)).shape == (0, D)
    for reuse in (False, True):
        seen = []
        for start, stop, block in c.iter_blocks(300, reuse=reuse):  # rounded to 384 rows
            assert stop - start in (384, 232)
            np.testing.assert_array_equal(block, emb[start:stop])
            seen.append((start, stop))
        assert seen == [(0, 384), (384, 768), (768, 1000)]


def test_float32_cache(tmp_path):
    emb, cols, runs = _arrays(dtype="float32")
    c = open_cache(write_cache_from_arrays(tmp_path / "c", emb, cols, runs, chunk_rows=256))
    assert c.dtype == np.float32
    np.testing.assert_array_equal(c.take(np.arange(N)[::-3]), emb[::-3])


def test_plain_zarr_opens_the_cache(cache):
    # the snippet the README gives: no vh needed to read a cache
    path, emb, cols, runs = cache
    g = zarr.open_group(str(path), mode="r")
    assert g.attrs["n"] == N and g.attrs["dtype"] == "float16"
    np.testing.assert_array_equal(g["emb"][:], emb)
    np.testing.assert_array_equal(g["columns/max_exp"][:], cols["max_exp"])
    np.testing.assert_array_equal(g["runs/id"][:], np.sort(runs["id"]))
    assert g["emb"].chunks == (CHUNK, D)


def test_runs_db_predicates_match_numpy(cache):
    path, _, _, runs = cache
    db = open_cache(path).runs_db()
    got = [r[0] for r in db.execute("SELECT id FROM runs WHERE highest_tile >= 1024 ORDER BY id")]
    assert got == sorted(runs["id"][runs["highest_tile"] >= 1024].tolist())
    assert db.execute("SELECT seed FROM runs WHERE id = 3").fetchone()[0] == 3 + 7


def test_incomplete_cache_is_refused_unless_asked(cache):
    path, emb, _, _ = cache
    (path / schema.MARKER).unlink()
    with pytest.raises(VhError) as e:
        open_cache(path)
    assert e.value.code == 3 and "incomplete" in e.value.message and "8 of 8" in e.value.message
    c = open_cache(path, allow_incomplete=True)
    assert not c.complete and c.done_units().all()


def test_unit_without_ledger_record_is_not_done(cache):
    path, emb, _, _ = cache
    (path / schema.MARKER).unlink()
    (path / schema.LEDGER_DIR / "unit-00000003.json").unlink()
    # a record written for other inputs does not count either
    rec = ledger.read_record(path, "unit-00000005")
    ledger.write_record(path, "unit-00000005", {**rec, "fingerprint_digest": "0" * 64})
    # and a truncated record (a torn write would look like this) is no record
    (path / schema.LEDGER_DIR / "unit-00000006.json").write_text('{"unit": 6, "sta')
    c = open_cache(path, allow_incomplete=True)
    assert np.flatnonzero(~c.done_units()).tolist() == [3, 5, 6]
    with pytest.raises(VhError, match="3 of 8 units not done"):
        CacheWriter(path).finish()
    assert not (path / schema.MARKER).exists()


def test_marker_of_other_fingerprint_is_not_complete(cache):
    path, _, _, _ = cache
    ledger.atomic_write_json(path / schema.MARKER, {"fingerprint_digest": "f" * 64})
    with pytest.raises(VhError, match="incomplete"):
        open_cache(path)


def test_fingerprint_mismatch_names_the_difference(cache):
    path, _, _, _ = cache
    good = open_cache(path).fingerprint
    open_cache(path, expect_fingerprint=good)  # equal: fine
    bad = json.loads(json.dumps(good))
    bad["extract"]["emb_sha256"] = "ab" * 32
    bad["inputs"]["steps-00001.npy"] = {"size": 46, "sha256": "cd" * 32}
    with pytest.raises(VhError) as e:
        open_cache(path, expect_fingerprint=bad)
    msg = e.value.line()
    assert e.value.code == 3 and e.value.field == "fingerprint" and "\n" not in msg
    assert "extract emb_sha256 differs" in msg
    assert "input file steps-00001.npy size missing from the cache" in msg


def test_fingerprint_differences_in_words():
    a = fp.make_fingerprint(
        {"kind": "init", "weights_sha256": "1a" * 32, "config": {"h": 8}},
        {
            "steps-00000.npy": {"size": 10, "sha256": "aa"},
            "metadata.db": {"size": 5, "sha256": "bb"},
        },
        {"dtype": "float16"},
    )
    b = json.loads(json.dumps(a))
    assert fp.differences(a, b) == [] and fp.digest(a) == fp.digest(b)
    b["trunk"]["weights_sha256"] = "3c" * 32
    b["inputs"]["steps-00000.npy"]["size"] = 11
    b["trunk"]["config"]["h"] = 16
    diffs = fp.differences(a, b)
    assert 'trunk weights_sha256 differs: cache "1a1a1a1a1a1a…" vs input "3c3c3c3c3c3c…"' in diffs
    assert "input file steps-00000.npy size differs: cache 10 vs input 11" in diffs
    assert "trunk config.h differs: cache 8 vs input 16" in diffs
    assert len(diffs) == 3 and fp.digest(a) != fp.digest(b)


def test_sha256_file_streams(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    data = np.random.default_rng(0).bytes(100_003)
    p.write_bytes(data)
    monkeypatch.setattr(fp, "_HASH_BLOCK", 4096)  # many blocks
    assert fp.sha256_file(p) == hashlib.sha256(data).hexdigest()
    entries = fp.file_entries([p, p], root=tmp_path)
    assert entries == {"f.bin": {"size": 100_003, "sha256": hashlib.sha256(data).hexdigest()}}


def test_atomic_record_survives_a_failed_replace(tmp_path, monkeypatch):
    ledger.write_record(tmp_path, "unit-00000000", {"unit": 0, "v": 1})

    def boom(*a):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        ledger.write_record(tmp_path, "unit-00000000", {"unit": 0, "v": 2})
    monkeypatch.undo()
    assert ledger.read_record(tmp_path, "unit-00000000") == {"unit": 0, "v": 1}
    tmps = [f for f in os.listdir(tmp_path / "ledger") if f.endswith(".tmp")]
    assert len(tmps) == 1  # what a kill between write and replace leaves behind
    assert ledger.remove_temp_files(tmp_path) == 1
    assert os.listdir(tmp_path / "ledger") == ["unit-00000000.json"]


def test_corrupted_chunk_is_refused(cache):
    path, _, _, _ = cache
    chunk = path / "emb" / "c" / "2" / "0"
    b = bytearray(chunk.read_bytes())
    b[100] ^= 1  # one bit
    chunk.write_bytes(bytes(b))
    c = open_cache(path)
    c.read_rows(0, 256)  # other chunks still read
    with pytest.raises(VhError, match="rows 256:300") as e:
        c.read_rows(256, 300)
    assert e.value.field == "emb"


def test_finish_checks_chunk_against_ledger(cache):
    path, emb, _, _ = cache
    (path / schema.MARKER).unlink()
    w = CacheWriter(path)
    assert w.verify() == []
    # a chunk rewritten after its record (a second writer, a stale process): the record lies
    w.emb[0:CHUNK] = emb[0:CHUNK] + 1
    assert w.verify() == ["unit 0: chunk checksum differs from its ledger record"]
    with pytest.raises(VhError, match="cannot be finished"):
        w.finish()


def test_write_unit_rejects_wrong_shape(tmp_path):
    w = init_cache(
        tmp_path / "c",
        n=300,
        d=4,
        dtype="float16",
        chunk_rows=128,
        pooling="mean",
        columns={"run_id": np.int64},
        runs={"id": np.arange(3)},
        fingerprint={"x": 1},
        extract_config={},
    )
    with pytest.raises(VhError, match="unit 2 expects a block of shape"):
        w.write_unit(2, np.zeros((128, 4)))
    with pytest.raises(VhError, match="differ from the schema"):
        w.write_columns({"step_index": np.zeros(300)})
    with pytest.raises(VhError, match="shape"):
        w.write_columns({"run_id": np.zeros(299)})


def test_bad_caches_name_file_and_field(tmp_path, cache):
    with pytest.raises(VhError, match="not a vh cache"):
        open_cache(tmp_path / "nothing")
    path, _, _, _ = cache
    c = open_cache(path)
    with pytest.raises(VhError) as e:
        c.column("return")
    assert e.value.field == "columns/return" and "has: run_id" in e.value.message
    with pytest.raises(VhError, match="outside"):
        c.take(np.array([N]))
    with pytest.raises(VhError, match="out must be"):
        c.read_rows(0, 10, out=np.empty((10, D), np.float32))
    meta = json.loads((path / "zarr.json").read_text())
    del meta["attributes"]["fingerprint"]
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(VhError) as e:
        open_cache(path)
    assert e.value.field == "fingerprint" and e.value.path.endswith("zarr.json")


def test_clear_refuses_a_folder_that_is_not_a_cache(tmp_path):
    (tmp_path / "precious.txt").write_text("x")
    with pytest.raises(VhError, match="not a vh cache"):
        clear_cache_dir(tmp_path)
    assert (tmp_path / "precious.txt").exists()


def test_lock_refuses_a_second_holder_and_recovers_a_stale_one(tmp_path, capsys):
    with CacheLock(tmp_path):
        with pytest.raises(VhError, match=f"pid {os.getpid()}") as e:
            CacheLock(tmp_path).acquire()
        assert e.value.code == 3
    assert not (tmp_path / schema.LOCK).exists()
    # a lock left by a process that died
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    (tmp_path / schema.LOCK).write_text(
        json.dumps({"pid": int(dead), "host": socket.gethostname(), "started_unix": 0})
    )
    with CacheLock(tmp_path, log=sys.stderr):
        pass
    assert "stale lock" in capsys.readouterr().err
    # a live pid on another host is never broken
    (tmp_path / schema.LOCK).write_text(
        json.dumps({"pid": int(dead), "host": "elsewhere", "started_unix": 0})
    )
    with pytest.raises(VhError, match="elsewhere"):
        CacheLock(tmp_path).acquire()
