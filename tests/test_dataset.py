"""extract/dataset.py on dataset dirs hand-built with numpy and sqlite3 (no dataset writer).

Every file is built here from planted logical rows (run ids, step indices, exponents, moves)
in the exact dtypes of extract/formats.py; the reader must give those rows back, and every bad
input must raise a VhError naming the file and the field.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vh.errors import VhError
from vh.extract import formats
from vh.extract.board import pack
from vh.extract.dataset import CHUNK_ROWS, open_dataset

RUNS = {12: 3, 3: 5, 7: 1, 11: 8}  # run id -> steps, in file order (not sorted on purpose)

# the packed layout with its fields reversed and the other step/move names
REORDERED = np.dtype(
    [
        (
            ("step_idx" if n == "step_index" else "move" if n == "move_dir" else n),
            formats.PACKED_46.fields[n][0],
        )
        for n in reversed(formats.PACKED_46.names)
    ]
)


# --------------------------------------------------------------------------- builders


def plant(
    seed: int = 0, runs: dict[int, int] = RUNS, max_exp: int = 15, big: bool = False
) -> dict[str, np.ndarray]:
    """Logical rows, runs contiguous in the order of ``runs``; ``big`` plants 65536 tiles."""
    rng = np.random.default_rng(seed)
    n = sum(runs.values())
    exps = rng.integers(0, max_exp + 1, (n, 16)).astype(np.uint8)
    if big:  # rows 2 and 3 (run 12's last row, run 3's first) hold 65536 tiles
        exps[2, 5] = exps[3, 0] = exps[3, 15] = 16
    return {
        "run_id": np.repeat(list(runs), list(runs.values())).astype(np.int64),
        "step_index": np.concatenate([np.arange(k) for k in runs.values()]).astype(np.int64),
        "exps": exps,
        "move": rng.integers(0, 4, n).astype(np.uint8),
    }


def _name(dtype: np.dtype, *options: str) -> str:
    return next(o for o in options if o in dtype.names)


def records(rows: dict[str, np.ndarray], dtype: np.dtype, seed: int = 1) -> np.ndarray:
    """The rows in ``dtype``, filled by field name; every other byte is random junk."""
    n = len(rows["run_id"])
    rng = np.random.default_rng(seed)
    arr = np.frombuffer(rng.bytes(n * dtype.itemsize), dtype=dtype).copy()
    arr["run_id"] = rows["run_id"]
    arr[_name(dtype, "step_index", "step_idx")] = rows["step_index"]
    arr[_name(dtype, "move_dir", "move")] = rows["move"]
    if "ev_legal" in dtype.names:  # a 4-bit mask: junk above 15 is refused by the reader
        arr["ev_legal"] &= 15
    if "exps" in dtype.names:
        arr["exps"] = rows["exps"]
    else:
        boards, mask = pack(rows["exps"])
        arr["board"] = boards
        if "tile_65536_mask" in dtype.names:
            arr["tile_65536_mask"] = mask
    return arr


def least_score(exps: np.ndarray) -> int:
    """Least score that built a board: a 2**e tile (e >= 2) took (e - 2) * 2**e from 4s."""
    e = np.asarray(exps, np.int64)
    return int(np.where(e >= 2, (e - 2) * 2**e, 0).sum())


def run_meta(rows: dict[str, np.ndarray]) -> dict[int, dict[str, int]]:
    """Per run: steps (row count), score, highest tile (2**max exponent), seed.

    The score is one the run's states allow: at least what its last board and its highest
    tile took to build, at most what 16 highest tiles built from 2s would have scored.
    """
    meta = {}
    for rid in dict.fromkeys(rows["run_id"].tolist()):
        sel = rows["run_id"] == rid
        top = int(rows["exps"][sel].max())
        least = max(least_score(rows["exps"][sel][-1]), least_score([top]))
        meta[rid] = {
            "steps": int(sel.sum()),
            "score": min(least + 1000 * rid + 17, 16 * max(top - 1, 0) * 2**top),
            "highest_tile": 2**top,
            "seed": 500 + rid,
        }
    return meta


def write_db(
    path: Path,
    meta: dict[int, dict[str, int]],
    steps_col: str = "steps",
    score_col: str = "max_score",
    seed: bool = True,
    session: bool = True,
) -> None:
    con = sqlite3.connect(path)
    seed_col = "seed INTEGER, " if seed else ""
    con.execute(
        f"CREATE TABLE runs (id INTEGER PRIMARY KEY, {seed_col}{steps_col} INTEGER, "
        f"{score_col} INTEGER, highest_tile INTEGER)"
    )
    for rid, m in sorted(meta.items(), key=lambda kv: -kv[0]):  # inserted in reverse id order
        vals = ([m["seed"]] if seed else []) + [m["steps"], m["score"], m["highest_tile"]]
        marks = ", ".join("?" * (len(vals) + 1))
        con.execute(f"INSERT INTO runs VALUES ({marks})", [rid, *vals])
    if session:
        con.execute("CREATE TABLE session (meta_key TEXT, meta_value TEXT)")
        con.executemany("INSERT INTO session VALUES (?, ?)", [("writer", "test"), ("gamma", "1")])
    con.commit()
    con.close()


def write_dataset(
    root: Path,
    rows: dict[str, np.ndarray],
    dtype: np.dtype = formats.PACKED_46,
    *,
    cuts: tuple[int, ...] = (),
    numbers: tuple[int, ...] | None = None,
    meta: dict | None = None,
    values: bool = False,
    **db,
) -> Path:
    """A dataset dir: ``steps.npy`` without cuts, else shards split at ``cuts``."""
    root.mkdir(parents=True, exist_ok=True)
    arr = records(rows, dtype)
    parts = np.split(arr, list(cuts))
    if cuts:
        for num, part in zip(numbers or range(len(parts)), parts, strict=True):
            np.save(root / f"steps-{num}.npy", part)
    else:
        np.save(root / "steps.npy", arr)
    write_db(root / "metadata.db", run_meta(rows) if meta is None else meta, **db)
    if values:
        np.save(root / "values.npy", value_records(rows))
    return root


def value_records(rows: dict[str, np.ndarray]) -> np.ndarray:
    v = np.zeros(len(rows["run_id"]), formats.VALUES)
    v["run_id"], v["step_index"] = rows["run_id"], rows["step_index"]
    v["reward"] = np.arange(len(v)) * 4.0
    v["return_raw"] = np.arange(len(v)) * 0.5 + 1
    return v


def assert_rows_equal(got, rows: dict[str, np.ndarray], lo: int = 0, hi: int | None = None):
    hi = len(rows["run_id"]) if hi is None else hi
    for k in ("run_id", "step_index", "exps", "move"):
        np.testing.assert_array_equal(getattr(got, k), rows[k][lo:hi], err_msg=k)
    assert got.run_id.dtype == np.int64 and got.exps.dtype == np.uint8
    assert got.start == lo


def vh_error(fn, path, field: str, *words: str) -> VhError:
    """Run ``fn``; it must raise a one-line VhError naming ``path``, ``field`` and ``words``."""
    with pytest.raises(VhError) as info:
        fn()
    err = info.value
    assert err.path is not None and Path(err.path).resolve() == Path(path).resolve(), err.line()
    assert err.field == field, err.line()
    line = err.line()
    assert "\n" not in line
    for w in words:
        assert w in line, line
    return err


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize(
    "dtype, itemsize, layout",
    [
        (formats.PACKED_46, 46, "packed"),
        (formats.PACKED_42, 42, "packed"),
        (formats.PACKED_48_ALIGNED, 48, "packed"),
        (formats.SELFPLAY, 45, "selfplay"),  # u8 run_id
        (formats.LEGACY, 32, "legacy"),  # u2 step_index, move named 'move'
        (REORDERED, 46, "packed"),  # fields in reverse order, step_idx / move
    ],
    ids=["packed46", "packed42", "packed48", "selfplay", "legacy", "reordered"],
)
def test_every_layout_reads_back_the_planted_rows(tmp_path, dtype, itemsize, layout):
    big = layout != "legacy"  # the legacy layout has no way to store a 65536 tile
    rows = plant(big=big)
    ds = open_dataset(write_dataset(tmp_path, rows, dtype))
    assert ds.layout == layout and ds.shards[0].dtype.itemsize == itemsize
    assert ds.n_rows == 17 and [s.path.name for s in ds.shards] == ["steps.npy"]
    assert_rows_equal(ds.read(0, ds.n_rows), rows)
    # a larger preallocated buffer is filled in place
    buf = np.full((40, 16), 99, np.uint8)
    got = ds.read(4, 15, out_exps=buf)
    assert_rows_equal(got, rows, 4, 15)
    assert np.shares_memory(got.exps, buf) and (buf[11:] == 99).all()
    scan = ds.validate()
    assert scan.max_exponent == (16 if big else int(rows["exps"].max()))
    assert got.reward is None and got.return_raw is None


def test_65536_tile_decoded_from_the_mask_and_checked_against_the_vocab(tmp_path):
    rows = plant(big=True)
    root = write_dataset(tmp_path, rows, formats.PACKED_42, cuts=(3,))
    ds = open_dataset(root)
    got = ds.read(0, ds.n_rows)
    # planted by hand in plant(): (row 2, cell 5), (row 3, cells 0 and 15)
    assert got.exps[2, 5] == 16 and got.exps[3, 0] == 16 and got.exps[3, 15] == 16
    assert (got.exps == 16).sum() == 3
    assert ds.validate(vocab=17).max_exponent == 16
    assert ds.summary()["vocab_needed"] == 17
    # global row 2 is row 2 of steps-0.npy (rows 0..2), the first state holding exponent 16
    vh_error(
        lambda: ds.validate(vocab=16),
        root / "steps-0.npy",
        "board",
        "row 2",
        "exponent 16",
        "vocab of 16",
    )
    vh_error(lambda: open_dataset(root, vocab=16).validate(), root / "steps-0.npy", "board")


def test_selfplay_exponent_above_the_codec_is_refused_without_a_vocab(tmp_path):
    rows = plant()
    meta = run_meta(rows)  # before the 20: metadata.db itself holds no impossible tile
    rows["exps"][9, 4] = 20
    root = write_dataset(tmp_path, rows, formats.SELFPLAY, meta=meta)
    vh_error(
        lambda: open_dataset(root).validate(), root / "steps.npy", "exps", "row 9", "exponent 20"
    )


def test_shards_are_ordered_by_number_and_read_across_boundaries(tmp_path):
    rows = plant(runs={1: 4, 2: 6, 3: 7})
    # shard 10 holds the last rows: a lexical sort would put it between 1 and 2
    root = write_dataset(tmp_path, rows, cuts=(4, 10), numbers=(1, 2, 10))
    ds = open_dataset(root)
    assert [s.path.name for s in ds.shards] == ["steps-1.npy", "steps-2.npy", "steps-10.npy"]
    assert [s.start for s in ds.shards] == [0, 4, 10]
    assert_rows_equal(ds.read(0, 17), rows)
    assert_rows_equal(ds.read(3, 12), rows, 3, 12)  # spans all three shards
    assert len(ds.read(5, 5)) == 0
    with pytest.raises(IndexError):
        ds.read(0, 18)
    ds.validate()


@pytest.mark.parametrize("reuse", [False, True])
def test_iter_chunks_cover_the_rows_in_order(tmp_path, reuse):
    rows = plant()
    ds = open_dataset(write_dataset(tmp_path, rows, cuts=(5, 6, 6)))  # includes an empty shard
    chunks = [(c.start, c.run_id.copy(), c.exps.copy()) for c in ds.iter_chunks(4, 2, reuse=reuse)]
    assert [s for s, _, _ in chunks] == [2, 6, 10, 14]
    np.testing.assert_array_equal(np.concatenate([r for _, r, _ in chunks]), rows["run_id"][2:])
    np.testing.assert_array_equal(np.concatenate([e for _, _, e in chunks]), rows["exps"][2:])


def test_shards_are_mapped_read_only(tmp_path):
    ds = open_dataset(write_dataset(tmp_path, plant()))
    arr = ds.shards[0].array
    assert isinstance(arr, np.memmap) and arr.mode == "r"
    with pytest.raises(ValueError, match="read-only"):
        arr["run_id"][0] = 5
    with pytest.raises(ValueError, match="read-only"):
        arr[0] = arr[1]


def test_values_sidecar_is_read_alongside(tmp_path):
    rows = plant()
    ds = open_dataset(write_dataset(tmp_path, rows, values=True))
    got = ds.read(2, 9)
    np.testing.assert_array_equal(got.reward, np.arange(2, 9) * 4.0)
    np.testing.assert_array_equal(got.return_raw, np.arange(2, 9) * 0.5 + 1)
    assert got.reward.dtype == np.float32
    assert ds.validate().rows == 17
    assert ds.summary()["values_sidecar"] == ["values.npy"]


def test_files_lists_every_input(tmp_path):
    root = write_dataset(tmp_path, plant(), cuts=(8,), values=True)
    ds = open_dataset(root)
    assert sorted(ds.files()) == sorted(p for p in root.iterdir())


# --------------------------------------------------------------------------- metadata.db


@pytest.mark.parametrize(
    "steps_col, score_col, seed",
    [
        ("steps", "max_score", True),
        ("num_moves", "final_score", False),
        ("num_steps", "max_score", True),
        ("num_steps", "final_score", False),
    ],
)
def test_metadata_variants_are_probed_and_reported(tmp_path, steps_col, score_col, seed):
    rows = plant()
    ds = open_dataset(
        write_dataset(tmp_path, rows, steps_col=steps_col, score_col=score_col, seed=seed)
    )
    assert ds.columns_used == {
        "id": "id",
        "steps": steps_col,
        "score": score_col,
        "highest_tile": "highest_tile",
        "seed": "seed" if seed else None,
    }
    meta = run_meta(rows)
    ids = sorted(meta)
    np.testing.assert_array_equal(ds.runs.id, ids)
    np.testing.assert_array_equal(ds.runs.steps, [meta[i]["steps"] for i in ids])
    np.testing.assert_array_equal(ds.runs.final_score, [meta[i]["score"] for i in ids])
    np.testing.assert_array_equal(ds.runs.highest_tile, [meta[i]["highest_tile"] for i in ids])
    np.testing.assert_array_equal(ds.runs.seed, [meta[i]["seed"] if seed else -1 for i in ids])
    assert all(a.dtype == np.int64 for a in vars(ds.runs).values())
    assert ds.session == {"writer": "test", "gamma": "1"}
    ds.validate()


def test_summary_against_independent_computations(tmp_path):
    rows = plant(runs={1: 4, 2: 9, 3: 2, 4: 30, 5: 11})
    ds = open_dataset(write_dataset(tmp_path, rows, formats.PACKED_48_ALIGNED, cuts=(13,)))
    s = ds.summary()
    meta = run_meta(rows)
    steps = [m["steps"] for m in meta.values()]
    scores = [m["score"] for m in meta.values()]
    assert s["rows"] == 56 and s["runs"] == 5 and s["layout"] == "packed"
    assert s["shards"] == [
        {"name": "steps-0.npy", "rows": 13, "itemsize": 48},
        {"name": "steps-1.npy", "rows": 43, "itemsize": 48},
    ]
    assert s["steps_per_run"] == {"min": 2, "median": statistics.median(steps), "max": 30}
    tiles = Counter(m["highest_tile"] for m in meta.values())
    assert s["highest_tile"] == {str(t): n for t, n in sorted(tiles.items())}
    # numpy's default quantile is the 'inclusive' (linear) method of statistics.quantiles
    deciles = statistics.quantiles(scores, n=10, method="inclusive")
    quarts = statistics.quantiles(scores, n=4, method="inclusive")
    assert s["final_score"]["p10"] == pytest.approx(deciles[0])
    assert s["final_score"]["p90"] == pytest.approx(deciles[-1])
    assert s["final_score"]["p25"] == pytest.approx(quarts[0])
    assert s["final_score"]["median"] == pytest.approx(statistics.median(scores))
    assert s["max_exponent"] == int(rows["exps"].max()) and s["vocab_needed"] == 16
    assert s["columns_used"]["steps"] == "steps"
    json.dumps(s)  # JSON-able as it is


# --------------------------------------------------------------------------- bad npy files


def test_truncated_shard_is_detected_not_padded(tmp_path):
    root = write_dataset(tmp_path, plant(), cuts=(8,))
    shard = root / "steps-1.npy"
    full = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(full - 7)
    vh_error(
        lambda: open_dataset(root),
        shard,
        "shape",
        f"truncated: expected {full:,} bytes, found {full - 7:,}",
    )
    with open(shard, "ab") as f:  # now 5 bytes too long
        f.write(b"\0" * 12)
    vh_error(lambda: open_dataset(root), shard, "shape", f"found {full + 5:,}")


@pytest.mark.parametrize("content", [b"", b"hello, world", b"\x93NUMPY\x01\x00\xff\xff{"])
def test_not_an_npy_file(tmp_path, content):
    root = write_dataset(tmp_path, plant())
    (root / "steps.npy").write_bytes(content)
    vh_error(lambda: open_dataset(root), root / "steps.npy", "header", "not a valid .npy")


def test_plain_dtype_is_refused(tmp_path):
    root = write_dataset(tmp_path, plant())
    np.save(root / "steps.npy", np.zeros(17, np.uint64))
    vh_error(lambda: open_dataset(root), root / "steps.npy", "dtype", "not a structured", "u8")


def test_missing_field_names_it_and_what_was_found(tmp_path):
    dtype = np.dtype(
        [(n, formats.PACKED_42.fields[n][0]) for n in formats.PACKED_42.names if n != "step_index"]
    )
    rows = plant()
    root = tmp_path / "d"
    root.mkdir()
    arr = records({**rows}, formats.PACKED_42)
    np.save(root / "steps.npy", arr[list(dtype.names)].astype(dtype))
    write_db(root / "metadata.db", run_meta(rows))
    vh_error(
        lambda: open_dataset(root),
        root / "steps.npy",
        "step_index",
        "'step_index' or 'step_idx'",
        "found run_id, board",
    )


def test_wrongly_typed_field_is_refused(tmp_path):
    dtype = np.dtype(
        [("run_id", "<u4"), ("step_index", "<u4"), ("board", "<f8"), ("move_dir", "u1")]
    )
    root = tmp_path / "d"
    root.mkdir()
    np.save(root / "steps.npy", np.zeros(3, dtype))
    write_db(root / "metadata.db", {})
    vh_error(lambda: open_dataset(root), root / "steps.npy", "board", "64-bit integer")


def test_shards_must_share_a_layout(tmp_path):
    rows = plant()
    root = write_dataset(tmp_path, rows, cuts=(8,))
    np.save(root / "steps-1.npy", records({k: v[8:] for k, v in rows.items()}, formats.SELFPLAY))
    vh_error(lambda: open_dataset(root), root / "steps-1.npy", "dtype", "selfplay", "packed")


def test_mixed_itemsizes_of_one_layout_are_fine(tmp_path):
    rows = plant()
    root = write_dataset(tmp_path, rows, formats.PACKED_46, cuts=(8,))
    np.save(
        root / "steps-1.npy",
        records({k: v[8:] for k, v in rows.items()}, formats.PACKED_48_ALIGNED),
    )
    assert_rows_equal(open_dataset(root).read(0, 17), rows)


def test_ambiguous_or_unnumbered_shards(tmp_path):
    root = write_dataset(tmp_path, plant(), cuts=(8,))
    np.save(root / "steps.npy", records(plant(), formats.PACKED_46))
    vh_error(lambda: open_dataset(root), root, "steps", "both")
    (root / "steps.npy").unlink()
    (root / "steps-x.npy").write_bytes(b"")
    vh_error(lambda: open_dataset(root), root / "steps-x.npy", None, "no number")


def test_no_shards_or_no_directory(tmp_path):
    vh_error(lambda: open_dataset(tmp_path), tmp_path, "steps", "no steps.npy")
    vh_error(lambda: open_dataset(tmp_path / "nope"), tmp_path / "nope", None, "no such")


# --------------------------------------------------------------------------- bad metadata.db


def test_no_metadata_db(tmp_path):
    root = write_dataset(tmp_path, plant())
    (root / "metadata.db").unlink()
    vh_error(lambda: open_dataset(root), root, "metadata.db", "no metadata.db")


@pytest.mark.parametrize(
    "schema, field, words",
    [
        ("CREATE TABLE games (id INTEGER)", "runs", ["no 'runs' table", "games"]),
        (
            "CREATE TABLE runs (id INTEGER, moves INTEGER, max_score INTEGER, highest_tile INTEGER)",
            "runs.steps",
            ["steps, num_steps, num_moves", "columns are id, moves, max_score"],
        ),
        (
            "CREATE TABLE runs (id INTEGER, steps INTEGER, score INTEGER, highest_tile INTEGER)",
            "runs.max_score",
            ["max_score, final_score", "score"],
        ),
        (
            "CREATE TABLE runs (id INTEGER, steps INTEGER, max_score INTEGER, best_tile INTEGER)",
            "runs.highest_tile",
            ["best_tile"],
        ),
        (
            "CREATE TABLE runs (run INTEGER, steps INTEGER, max_score INTEGER, highest_tile INTEGER)",
            "runs.id",
            ["run, steps"],
        ),
    ],
)
def test_unusable_runs_table(tmp_path, schema, field, words):
    root = write_dataset(tmp_path, plant())
    (root / "metadata.db").unlink()
    con = sqlite3.connect(root / "metadata.db")
    con.execute(schema)
    con.commit()
    con.close()
    vh_error(lambda: open_dataset(root), root / "metadata.db", field, *words)


@pytest.mark.parametrize(
    "sql, field, words",
    [
        ("UPDATE runs SET steps = NULL WHERE id = 7", "runs.steps", ["run 7", "None"]),
        (
            "UPDATE runs SET highest_tile = 11 WHERE id = 3",
            "runs.highest_tile",
            ["run 3", "11 is not a tile value"],
        ),
        ("UPDATE runs SET max_score = 'lots' WHERE id = 11", "runs.max_score", ["'lots'"]),
    ],
)
def test_bad_values_in_runs(tmp_path, sql, field, words):
    root = write_dataset(tmp_path, plant())
    con = sqlite3.connect(root / "metadata.db")
    con.execute(sql)
    con.commit()
    con.close()
    vh_error(lambda: open_dataset(root), root / "metadata.db", field, *words)


def test_not_a_database(tmp_path):
    root = write_dataset(tmp_path, plant())
    (root / "metadata.db").write_bytes(b"this is not sqlite" * 100)
    vh_error(lambda: open_dataset(root), root / "metadata.db", None, "not a readable SQLite")


def test_locked_database(tmp_path, monkeypatch):
    import vh.extract.metadata as M

    monkeypatch.setattr(M, "_DB_TIMEOUT_S", 0.05)  # do not wait 5 s for the lock in a test
    root = write_dataset(tmp_path, plant())
    writer = sqlite3.connect(root / "metadata.db", isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        vh_error(lambda: open_dataset(root), root / "metadata.db", None, "locked")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    open_dataset(root)  # fine once the writer is done


# --------------------------------------------------------------------------- full validation


def test_unknown_run_id(tmp_path):
    rows = plant()
    meta = run_meta(rows)
    del meta[11]  # rows 9..16 belong to run 11
    root = write_dataset(tmp_path, rows, cuts=(6,), meta=meta)
    ds = open_dataset(root)
    vh_error(
        ds.validate, root / "steps-1.npy", "run_id", "row 3", "run_id 11", "not in metadata.db"
    )


def test_row_count_disagrees_with_db(tmp_path):
    rows = plant()
    meta = run_meta(rows)
    meta[3]["steps"] = 6  # run 3 has 5 rows
    root = write_dataset(tmp_path, rows, meta=meta, steps_col="num_moves")
    vh_error(
        open_dataset(root).validate,
        root / "metadata.db",
        "runs.num_moves",
        "run 3",
        "5 rows",
        "num_moves = 6",
    )


def test_db_run_without_rows_disagrees(tmp_path):
    rows = plant()
    meta = run_meta(rows)
    meta[99] = {"steps": 4, "score": 0, "highest_tile": 4, "seed": 0}
    root = write_dataset(tmp_path, rows, meta=meta)
    vh_error(
        open_dataset(root).validate,
        root / "metadata.db",
        "runs.steps",
        "run 99",
        "0 rows",
        "steps = 4",
    )


@pytest.mark.parametrize("chunk_rows", [1, 3, 4, CHUNK_ROWS])
def test_run_rows_not_contiguous(tmp_path, chunk_rows):
    rows = plant()
    order = np.r_[0:3, 9:12, 3:9, 12:17]  # run 12, run 11 (part), run 3, run 7, run 11 (rest)
    rows = {k: v[order] for k, v in rows.items()}
    rows["step_index"][12:] = np.arange(3, 8)  # still increasing within run 11
    meta = run_meta(plant())
    root = write_dataset(tmp_path, rows, cuts=(10,), meta=meta)
    ds = open_dataset(root)
    # run 11 starts at global row 3 (steps-0 row 3) and again at global row 12 (steps-1 row 2)
    vh_error(
        lambda: ds.validate(chunk_rows=chunk_rows),
        root / "steps-1.npy",
        "run_id",
        "row 2",
        "run 11",
        "steps-0.npy row 3",
        "contiguous",
    )


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 4, 5, CHUNK_ROWS])
@pytest.mark.parametrize("row, step", [(4, 0), (5, 1), (16, 6), (10, 0)])
def test_step_index_must_increase_within_a_run(tmp_path, chunk_rows, row, step):
    rows = plant()
    rows["step_index"][row] = step  # run 3 = rows 3..7, run 11 = rows 9..16
    root = write_dataset(tmp_path, rows, formats.SELFPLAY, cuts=(6,), meta=run_meta(plant()))
    ds = open_dataset(root)
    shard, local = ("steps-0.npy", row) if row < 6 else ("steps-1.npy", row - 6)
    vh_error(
        lambda: ds.validate(chunk_rows=chunk_rows),
        root / shard,
        "step_idx",
        f"row {local}:",
        f"step index {step} follows",
    )


def test_run_boundaries_across_chunks_are_fine(tmp_path):
    rows = plant(runs={5: 9, 6: 1, 8: 7})
    ds = open_dataset(write_dataset(tmp_path, rows, cuts=(2, 9)))
    for chunk_rows in (1, 2, 5, 9, 100):
        ds._scan = None  # force a rescan with another chunking
        scan = ds.validate(chunk_rows=chunk_rows)
        np.testing.assert_array_equal(scan.run_rows, [9, 1, 7])
        want = [rows["exps"][rows["run_id"] == r].max() for r in (5, 6, 8)]
        np.testing.assert_array_equal(scan.run_max_exponent, want)


def test_highest_tile_below_the_states_is_refused(tmp_path):
    rows = plant()
    meta = run_meta(rows)
    meta[11]["highest_tile"] //= 2
    root = write_dataset(tmp_path, rows, meta=meta)
    vh_error(open_dataset(root).validate, root / "metadata.db", "runs.highest_tile", "run 11")


def test_values_sidecar_misaligned(tmp_path):
    rows = plant()
    root = write_dataset(tmp_path, rows, cuts=(6,))
    v = value_records(rows)
    np.save(root / "values-0.npy", v[:10])
    np.save(root / "values-1.npy", v[10:16])  # one row short
    vh_error(lambda: open_dataset(root), root / "values-0.npy", "rows", "16 rows", "17")
    v2 = v.copy()
    v2["run_id"][12] = 3
    np.save(root / "values-1.npy", v2[10:])
    vh_error(
        open_dataset(root).validate, root / "values-1.npy", "run_id", "row 2:", "steps-1.npy row 6"
    )
    v3 = v.copy()
    v3["step_index"][4] = 9
    np.save(root / "values-0.npy", v3[:10])
    np.save(root / "values-1.npy", v3[10:])
    vh_error(open_dataset(root).validate, root / "values-0.npy", "step_index", "row 4:")


# --------------------------------------------------------------------------- random dtypes


_INTS = ["<u2", "<u4", "<u8", "<i4", "<i8", ">u4", ">u8"]
_EXTRA = [
    ("ev", "<f4", (4,)),
    ("pad", "V3"),
    ("flag", "u1"),
    ("score", "<i8"),
    ("logits", ">f2", (2,)),
]


@st.composite
def random_dtypes(draw):
    """A structured dtype of any layout with random field order, widths and extra fields."""
    layout = draw(st.sampled_from(["packed", "selfplay", "legacy"]))
    fields = [
        ("run_id", draw(st.sampled_from(_INTS))),
        (draw(st.sampled_from(formats.STEP_FIELDS)), draw(st.sampled_from(_INTS))),
        (draw(st.sampled_from(formats.MOVE_FIELDS)), draw(st.sampled_from(["u1", "<u2", "<i4"]))),
    ]
    if layout == "selfplay":
        fields.append(("exps", "u1", (16,)))
    else:
        fields.append(("board", draw(st.sampled_from(["<u8", ">u8", "<i8"]))))
    if layout == "packed":
        fields.append(("tile_65536_mask", draw(st.sampled_from(["<u2", ">u2", "<u4"]))))
    fields += draw(st.lists(st.sampled_from(_EXTRA), unique_by=lambda f: f[0], max_size=3))
    order = draw(st.permutations(range(len(fields))))
    return layout, np.dtype([fields[i] for i in order], align=draw(st.booleans()))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=random_dtypes(), seed=st.integers(0, 2**16), cut=st.integers(0, 17))
def test_random_structured_dtypes_read_back(spec, seed, cut):
    layout, dtype = spec
    rows = plant(seed, big=layout != "legacy")
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp), rows, dtype, cuts=(cut,))
        ds = open_dataset(root)
        assert ds.layout == layout
        assert_rows_equal(ds.read(0, ds.n_rows), rows)
        assert ds.validate(chunk_rows=5).max_exponent == int(rows["exps"].max())


# --------------------------------------------------------------------------- CLI


def _cli():
    import vh.cmd_inspect  # noqa: F401  (registers the command)
    from vh.shell import main

    return main


def test_inspect_cli_prints_summary_and_one_closing_line(tmp_path):
    root = write_dataset(
        tmp_path / "ds", plant(big=True), cuts=(5,), steps_col="num_moves", score_col="final_score"
    )
    res = CliRunner().invoke(_cli(), ["inspect", str(root)])
    assert res.exit_code == 0, res.output
    out = res.stdout.strip().splitlines()
    assert out[-1] == f"inspected 17 rows in 4 runs of {root}: all checks passed"
    text = "\n".join(out)
    assert "packed" in text and "steps=num_moves" in text and "needs vocab 17" in text
    res = CliRunner().invoke(_cli(), ["inspect", str(root), "--json"])
    assert res.exit_code == 0
    s = json.loads(res.stdout)
    assert s["rows"] == 17 and s["columns_used"]["score"] == "final_score"


def test_inspect_cli_bad_input_is_one_line(tmp_path):
    root = write_dataset(tmp_path / "ds", plant(big=True))
    res = CliRunner().invoke(_cli(), ["inspect", str(root), "--vocab", "16"])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 or res.stderr.strip().splitlines()[-1].startswith("error")
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "steps.npy" in last and "board" in last
    assert "Traceback" not in res.output


# --------------------------------------------------------------------------- performance


@pytest.mark.slow
def test_read_throughput_of_a_packed_shard(tmp_path):
    """Reading + decoding 4M packed rows into a preallocated buffer (prints rows/s)."""
    n = 4_000_000
    runs = {i: 1000 for i in range(n // 1000)}
    rng = np.random.default_rng(0)
    arr = np.zeros(n, formats.PACKED_46)
    arr["run_id"] = np.repeat(np.arange(n // 1000), 1000)
    arr["step_index"] = np.tile(np.arange(1000), n // 1000)
    arr["board"], arr["tile_65536_mask"] = pack(rng.integers(0, 16, (n, 16)))
    root = tmp_path / "big"
    root.mkdir()
    np.save(root / "steps.npy", arr)
    write_db(
        root / "metadata.db",
        {r: {"steps": k, "score": 0, "highest_tile": 32768, "seed": 0} for r, k in runs.items()},
    )
    ds = open_dataset(root)
    buf = np.empty((n, 16), np.uint8)
    best = min(_timed(lambda: ds.read(0, n, out_exps=buf)) for _ in range(3))
    print(f"\nDataset.read: {n / best / 1e6:.1f}M rows/s")
    assert n / best > 5e6


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_empty_dataset_validates_and_summarises(tmp_path):
    rows = {k: v[:0] for k, v in plant().items()}
    ds = open_dataset(write_dataset(tmp_path, rows, formats.SELFPLAY))
    assert ds.n_rows == 0 and len(ds.runs) == 0 and len(ds.read(0, 0)) == 0
    s = ds.summary()
    assert s["max_exponent"] == -1 and s["steps_per_run"]["median"] is None
    assert list(ds.iter_chunks()) == []
