"""Inputs that cannot be true are refused, never used (issue 10, items 2 and 6).

Each case corrupts a copy of a good tiny dataset (written by `vh synth`, real games) with
numpy or sqlite3, then runs `vh inspect` and `vh extract` on it. What every case must show:
exactly one ``error:`` line naming the file, the field and (where there is one) the run id,
a non-zero exit, no traceback, the inputs byte-identical afterwards and no output folder.
The fit cases corrupt a finished cache's columns through zarr and run `vh fit`.

The expected values in the messages (run ids, tiles, rows) are read from the files here, not
copied from the code under test.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIT_SETS, TINY, assert_one_line_error, invoke, run_ok, snapshot

from vh.errors import VhError

# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny) -> dict[str, Path]:
    """The shared tiny inputs plus a dataset with a values sidecar and a cache with returns."""
    t = tmp_path_factory.mktemp("impossible")
    run_ok(["synth", "--out", t / "dsv", "--config", TINY, "--games", "12", "--values"])
    run_ok(["extract", "--dataset", t / "dsv", "--init", tiny["trunk"], "--out", t / "cache_ret",
            "--config", TINY, "--gamma", "0.9"])  # fmt: skip
    return {**tiny, "dsv": t / "dsv", "cache_ret": t / "cache_ret"}


def copy(good, name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(good[name], dst)
    return dst


def sql(ds: Path, *statements: str) -> None:
    con = sqlite3.connect(ds / "metadata.db")
    for s in statements:
        con.execute(s)
    con.commit()
    con.close()


def runs_of(ds: Path) -> dict[int, dict]:
    """The runs table, id -> {steps, max_score, highest_tile}."""
    con = sqlite3.connect(ds / "metadata.db")
    rows = con.execute("SELECT id, steps, max_score, highest_tile FROM runs").fetchall()
    con.close()
    return {r[0]: {"steps": r[1], "max_score": r[2], "highest_tile": r[3]} for r in rows}


def board_max_tile(ds: Path, run: int) -> int:
    """Largest tile on any board of a run, decoded here nibble by nibble."""
    top = 0
    for p in sorted(ds.glob("steps-*.npy")):
        a = np.load(p)
        for b in a["board"][a["run_id"] == run]:
            nibbles = [(int(b) >> (60 - 4 * i)) & 15 for i in range(16)]
            top = max(top, max(nibbles))
    return 2**top


def refused(ds: Path, tmp_path: Path, trunk: Path, *names) -> None:
    """`vh inspect` and `vh extract` both refuse ``ds`` with one line naming ``names``."""
    before = snapshot(ds)
    assert_one_line_error(invoke(["inspect", ds]), *names)
    out = tmp_path / "cache"
    r = invoke(["extract", "--dataset", ds, "--init", trunk, "--out", out, "--config", TINY])
    assert_one_line_error(r, *names)
    assert not out.exists()  # refused before any folder was made
    assert snapshot(ds) == before


def shard_with_run(ds: Path, pattern: str = "steps-*.npy") -> tuple[Path, int, int]:
    """``(shard, row, run)``: row 5 of the first shard and its run id."""
    p = sorted(ds.glob(pattern))[0]
    return p, 5, int(np.load(p)["run_id"][5])


# ----------------------------------------------------------------------------- values sidecar


@pytest.mark.parametrize(
    "field, value, shown", [("reward", np.nan, "nan"), ("return_raw", np.inf, "inf")]
)
def test_non_finite_values_sidecar(good, tmp_path, field, value, shown):
    ds = copy(good, "dsv", tmp_path)
    p, row, run = shard_with_run(ds, "values-*.npy")
    v = np.load(p)
    v[field][row] = value
    np.save(p, v)
    refused(ds, tmp_path, good["trunk"], "values-00000.npy", field, f"run {run}", shown)


# ----------------------------------------------------------------------------- metadata.db


def test_highest_tile_real_with_a_fraction(good, tmp_path):
    ds = copy(good, "ds", tmp_path)
    run = min(runs_of(ds))
    sql(ds, f"UPDATE runs SET highest_tile = 256.9 WHERE id = {run}")
    line = "runs.highest_tile"
    refused(ds, tmp_path, good["trunk"], "metadata.db", line, f"run {run}", "256.9", "integer")


def test_integral_reals_are_accepted_as_integers(good, tmp_path):
    """A column declared REAL keeps 256.0 as a REAL: it is the integer 256, not refused."""
    ds = copy(good, "ds", tmp_path)
    runs = runs_of(ds)
    sql(
        ds,
        "CREATE TABLE r2 (id INTEGER PRIMARY KEY, seed INTEGER, steps REAL, max_score REAL, "
        "highest_tile REAL)",
        "INSERT INTO r2 SELECT id, seed, steps * 1.0, max_score * 1.0, highest_tile * 1.0 "
        "FROM runs",
        "DROP TABLE runs",
        "ALTER TABLE r2 RENAME TO runs",
    )
    con = sqlite3.connect(ds / "metadata.db")
    assert {t for (t,) in con.execute("SELECT DISTINCT typeof(highest_tile) FROM runs")} == {"real"}
    con.close()
    from vh.extract.dataset import open_dataset

    d = open_dataset(ds)
    d.validate()
    ids = sorted(runs)
    np.testing.assert_array_equal(d.runs.highest_tile, [runs[i]["highest_tile"] for i in ids])
    np.testing.assert_array_equal(d.runs.final_score, [runs[i]["max_score"] for i in ids])
    assert d.runs.highest_tile.dtype == np.int64


@pytest.mark.parametrize("value, words", [(384, ["384", "not a tile value"]),
                                          (1, ["1 is not a tile value"]),
                                          (1 << 18, ["262144", "131072"])])  # fmt: skip
def test_highest_tile_not_a_tile(good, tmp_path, value, words):
    ds = copy(good, "ds", tmp_path)
    run = max(runs_of(ds))
    sql(ds, f"UPDATE runs SET highest_tile = {value} WHERE id = {run}")
    refused(ds, tmp_path, good["trunk"], "metadata.db", "runs.highest_tile", f"run {run}", *words)


def test_highest_tile_far_above_the_boards(good, tmp_path):
    ds = copy(good, "ds", tmp_path)
    run = min(runs_of(ds))
    top = board_max_tile(ds, run)
    sql(ds, f"UPDATE runs SET highest_tile = {top * 4} WHERE id = {run}")
    refused(ds, tmp_path, good["trunk"], "metadata.db", "runs.highest_tile", f"run {run}",
            str(top * 4), str(top))  # fmt: skip


def test_highest_tile_twice_the_boards_is_possible(good, tmp_path):
    """The bound is exact: one more move can double the largest tile (with a score to match)."""
    ds = copy(good, "ds", tmp_path)
    run = min(runs_of(ds))
    top = board_max_tile(ds, run)
    e = (2 * top).bit_length() - 1
    least = (e - 2) * 2 * top  # what building a 2**e tile took at least
    sql(
        ds,
        f"UPDATE runs SET highest_tile = {2 * top}, max_score = MAX(max_score, {least}) "
        f"WHERE id = {run}",
    )
    r = invoke(["inspect", ds])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "value, words", [(-5, ["negative score -5"]), (1234.5, ["1234.5", "not an integer"])]
)
def test_bad_score(good, tmp_path, value, words):
    ds = copy(good, "ds", tmp_path)
    run = max(runs_of(ds))
    sql(ds, f"UPDATE runs SET max_score = {value} WHERE id = {run}")
    refused(ds, tmp_path, good["trunk"], "metadata.db", "runs.max_score", f"run {run}", *words)


def test_score_below_what_the_boards_took(good, tmp_path):
    ds = copy(good, "ds", tmp_path)
    run = min(runs_of(ds))
    sql(ds, f"UPDATE runs SET max_score = 10 WHERE id = {run}")
    refused(ds, tmp_path, good["trunk"], "metadata.db", "runs.max_score", f"run {run}",
            "max_score = 10", "least score")  # fmt: skip


def test_score_above_what_the_highest_tile_allows(good, tmp_path):
    ds = copy(good, "ds", tmp_path)
    run = min(runs_of(ds))
    tile = runs_of(ds)[run]["highest_tile"]
    e = tile.bit_length() - 1
    too_much = 16 * (e - 1) * tile + 1  # 16 cells of the highest tile built from 2s, plus one
    sql(ds, f"UPDATE runs SET max_score = {too_much} WHERE id = {run}")
    refused(ds, tmp_path, good["trunk"], "metadata.db", "runs.max_score", f"run {run}",
            str(too_much))  # fmt: skip


def test_run_without_steps_is_not_a_run(good, tmp_path):
    ds = copy(good, "ds", tmp_path)
    sql(ds, "INSERT INTO runs (id, seed, steps, max_score, highest_tile) VALUES (999, 1, 0, 0, 4)")
    refused(ds, tmp_path, good["trunk"], "metadata.db", "runs.steps", "run 999", "0 rows")


def test_steps_disagreeing_with_rows(good, tmp_path):
    ds = copy(good, "ds", tmp_path)
    run = max(runs_of(ds))
    rows = sum(int((np.load(p)["run_id"] == run).sum()) for p in ds.glob("steps-*.npy"))
    sql(ds, f"UPDATE runs SET steps = {rows - 1} WHERE id = {run}")
    refused(ds, tmp_path, good["trunk"], "metadata.db", "runs.steps", f"run {run}",
            f"{rows} rows")  # fmt: skip


@pytest.mark.parametrize("value", ["'many'", "NULL", "1e400"])  # text, NULL, REAL inf
def test_steps_not_a_number(good, tmp_path, value):
    ds = copy(good, "ds", tmp_path)
    run = min(runs_of(ds))
    sql(ds, f"UPDATE runs SET steps = {value} WHERE id = {run}")
    refused(ds, tmp_path, good["trunk"], "metadata.db", "runs.steps", f"run {run}")


# ----------------------------------------------------------------------------- step shards


@pytest.mark.parametrize("field, value", [("move_dir", 7), ("ev_legal", 16)])
def test_small_field_out_of_range(good, tmp_path, field, value):
    ds = copy(good, "ds", tmp_path)
    p, row, run = shard_with_run(ds)
    a = np.load(p)
    a[field][row] = value
    np.save(p, a)
    refused(ds, tmp_path, good["trunk"], p.name, field, f"run {run}", f"row {row}", str(value))


def test_step_index_beyond_the_run(good, tmp_path):
    ds = copy(good, "ds", tmp_path)
    p = sorted(ds.glob("steps-*.npy"))[0]
    a = np.load(p)
    run = int(a["run_id"][0])
    last = int(np.flatnonzero(a["run_id"] == run)[-1])  # still increasing: only the end moves
    a["step_index"][last] += 5
    np.save(p, a)
    refused(ds, tmp_path, good["trunk"], p.name, "step_index", f"run {run}", f"row {last}")


# ----------------------------------------------------------------------------- special files


@pytest.mark.parametrize("name", ["steps-00001.npy", "values-00000.npy", "metadata.db"])
def test_fifo_named_like_an_input_is_refused_not_opened(good, tmp_path, name):
    """A FIFO would block open() forever: run in a subprocess with a timeout, so a regression
    fails the test instead of hanging it."""
    ds = copy(good, "dsv", tmp_path)
    (ds / name).unlink()
    os.mkfifo(ds / name)
    before = snapshot(ds)
    out = tmp_path / "cache"
    for args in (["inspect", ds],
                 ["extract", "--dataset", ds, "--init", good["trunk"], "--out", out,
                  "--config", TINY]):  # fmt: skip
        r = subprocess.run(
            [sys.executable, "-m", "vh", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode not in (0, None), r.stderr
        assert "Traceback" not in r.stderr
        lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert len(lines) == 1, r.stderr
        assert name in lines[0] and "FIFO" in lines[0], lines[0]
    assert not out.exists()
    assert snapshot(ds) == before
    assert (ds / name).is_fifo()


# ----------------------------------------------------------------------------- fit


def _poke_column(cache: Path, name: str, row: int, value: float) -> None:
    """Write one value into a cache column through zarr (its checksums stay valid)."""
    import zarr

    arr = zarr.open_array(str(cache / "columns" / name), mode="r+")
    arr[row] = value


def _fit_refused(good, cache: Path, tmp_path: Path, head: str, *names: str) -> None:
    before = snapshot(cache)
    out = tmp_path / "run"
    r = invoke(["fit", "--cache", cache, "--out", out, "--head", head, "--arch", "probe",
                "--config", TINY, *FIT_SETS])  # fmt: skip
    assert_one_line_error(r, *names)
    assert not out.exists()  # refused before the run dir was made
    assert snapshot(cache) == before


def test_fit_refuses_a_nan_return_label(good, tmp_path):
    cache = copy(good, "cache_ret", tmp_path)
    _poke_column(cache, "return", 17, np.nan)
    _fit_refused(good, cache, tmp_path, "return", "cache", "columns/return", "entry 17", "nan")


def test_fit_refuses_a_nan_step_fraction(good, tmp_path):
    cache = copy(good, "cache", tmp_path)
    _poke_column(cache, "step_fraction", 3, np.nan)
    _fit_refused(good, cache, tmp_path, "ordinal", "cache", "columns/step_fraction", "entry 3")


def test_fit_refuses_a_runs_table_tile_that_is_no_tile(good, tmp_path):
    import zarr

    cache = copy(good, "cache", tmp_path)
    arr = zarr.open_array(str(cache / "runs" / "highest_tile"), mode="r+")
    arr[0] = 300
    _fit_refused(good, cache, tmp_path, "ordinal", "runs/highest_tile", "300")


def test_infinite_bin_range_is_refused():
    from vh.config import TargetConfig
    from vh.heads.targets import make_spec

    cfg = TargetConfig(kind="logscore", bin_range=(0.0, float("inf")))
    with pytest.raises(VhError) as e:
        make_spec(cfg)
    assert e.value.field == "fit.target.bin_range" and "inf" in e.value.message
    with pytest.raises(VhError) as e:
        make_spec(TargetConfig(kind="logscore"), train_values=np.array([1.0, np.nan, 3.0]))
    assert e.value.field == "fit.target.bin_range"


@pytest.mark.parametrize("bad, shown", [(np.nan, "NaN"), (np.inf, "inf")])
def test_non_finite_validation_nll_stops_the_fit(bad, shown):
    from vh.heads.train import _check_finite

    stats = {"loss": np.ones((4, 2)), "nll": np.ones((4, 2))}
    with pytest.raises(VhError) as e:
        _check_finite(stats, np.array([0.5, bad]), 3, 40, ["a", "b"], Path("run"))
    line = e.value.line()
    assert f"validation NLL is {shown} at epoch 3" in line and "steps 40–43" in line
    assert "member b" in line and e.value.field == "validation NLL"
    _check_finite(stats, np.array([0.5, 0.25]), 3, 40, ["a", "b"])  # finite: no error
