"""The bad-input matrix (issue #7): every case drives the CLI end to end.

Each case breaks one thing in a copy of good inputs (a tiny synth dataset, a tiny trunk, a
finished cache, a fitted run dir, built once per module) and runs one `vh` command in-process
with click's CliRunner. What every case must show: a non-zero exit code, exactly one line
starting with ``error:`` that names the file and the field, no traceback, and nothing already
written lost (inputs byte-identical afterwards; a cache left mid-way still resumes).

Not writable: tests run as root here, where ``chmod 0o500`` does not stop writes, so the
output path is put under a regular FILE (``mkdir`` then fails with ENOTDIR, whoever runs it).
Full disk: simulated in-process by making the writes raise ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import FIT_SETS, TINY, assert_one_line_error, invoke, run_ok, snapshot


@pytest.fixture(scope="module")
def base(tiny) -> dict[str, Path]:
    """The shared good inputs (tests/conftest.py); tests copy what they break."""
    return tiny


def copy(base, name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(base[name], dst)
    return dst


def not_writable(tmp_path: Path) -> Path:
    """An output path nobody can create, root included: its parent is a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    return blocker / "out"


# ----------------------------------------------------------------------------- config, shell


def test_unknown_config_key(tmp_path):
    r = invoke(["synth", "--out", tmp_path / "d", "--set", "synth.gamez=3"])
    assert_one_line_error(r, "synth.gamez")
    assert not (tmp_path / "d").exists()


def test_wrongly_typed_set(tmp_path):
    r = invoke(["synth", "--out", tmp_path / "d", "--set", "synth.games=many"])
    assert_one_line_error(r, "synth.games")


def test_wrongly_typed_config_file(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[fit.train]\nlr = 'fast'\n")
    r = invoke(["synth", "--out", tmp_path / "d", "--config", cfg])
    assert_one_line_error(r, "bad.toml", "fit.train.lr")


def test_config_file_not_toml(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[synth\ngames = 3\n")
    r = invoke(["synth", "--out", tmp_path / "d", "--config", cfg])
    assert_one_line_error(r, "bad.toml")


def test_config_file_missing(tmp_path):
    r = invoke(["synth", "--out", tmp_path / "d", "--config", tmp_path / "nope.toml"])
    assert_one_line_error(r, "nope.toml")


def test_unknown_player(tmp_path):
    r = invoke(["synth", "--out", tmp_path / "d", "--player", "oracle"])
    assert_one_line_error(r, "synth.player", "oracle")


# ----------------------------------------------------------------------------- synth


def test_synth_out_not_writable(tmp_path):
    r = invoke(["synth", "--out", not_writable(tmp_path), "--config", TINY])
    assert_one_line_error(r, "blocker")


def test_synth_full_disk(tmp_path, monkeypatch):
    import vh.extract.synth as synth

    def full(file, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))

    monkeypatch.setattr(synth.np, "save", full)
    r = invoke(["synth", "--out", tmp_path / "d", "--config", TINY])
    monkeypatch.undo()
    assert_one_line_error(r, "steps-00000", "No space left")
    assert not (tmp_path / "d").exists()  # written to a temp dir, renamed only when done


def test_synth_refuses_to_overwrite(base, tmp_path):
    ds = copy(base, "ds", tmp_path)
    before = snapshot(ds)
    r = invoke(["synth", "--out", ds, "--config", TINY])
    assert_one_line_error(r, "ds", "--overwrite")
    assert snapshot(ds) == before


# ----------------------------------------------------------------------------- inspect: shards


def _shard(ds: Path, i: int = 0) -> Path:
    return ds / f"steps-{i:05d}.npy"


def _inspect_fails(ds: Path, *names: str) -> str:
    before = snapshot(ds)
    line = assert_one_line_error(invoke(["inspect", ds]), *names)
    assert snapshot(ds) == before  # a reader never writes
    return line


def test_truncated_shard(base, tmp_path):
    ds = copy(base, "ds", tmp_path)
    p = _shard(ds, 1)
    p.write_bytes(p.read_bytes()[:-100])
    _inspect_fails(ds, "steps-00001.npy", "truncated")


def test_shard_not_npy(base, tmp_path):
    ds = copy(base, "ds", tmp_path)
    _shard(ds).write_bytes(b"PK\x03\x04 this is a zip, not an npy file" * 10)
    _inspect_fails(ds, "steps-00000.npy", "header")


def test_shard_wrong_dtype(base, tmp_path):
    ds = copy(base, "ds", tmp_path)
    np.save(_shard(ds), np.zeros(1024, dtype=np.float64))
    _inspect_fails(ds, "steps-00000.npy", "dtype")


def test_shard_missing_field(base, tmp_path):
    ds = copy(base, "ds", tmp_path)
    a = np.load(_shard(ds))
    keep = [n for n in a.dtype.names if n != "run_id"]
    np.save(_shard(ds), a[keep].copy())
    _inspect_fails(ds, "steps-00000.npy", "run_id")


def test_shard_unknown_layout(base, tmp_path):
    ds = copy(base, "ds", tmp_path)
    a = np.load(_shard(ds))
    b = np.zeros(len(a), dtype=[("run_id", "<u4"), ("step_index", "<u4"), ("cells", "u1", 16)])
    np.save(_shard(ds), b)
    _inspect_fails(ds, "steps-00000.npy", "board")


def test_shards_disagree_on_layout(base, tmp_path):
    ds = copy(base, "ds", tmp_path)
    a = np.load(_shard(ds, 1))
    b = np.zeros(len(a), dtype=[("run_id", "<u8"), ("step_idx", "<u4"), ("exps", "u1", (16,)),
                                ("move_dir", "u1"), ("logp", "<f4", (4,))])  # fmt: skip
    np.save(_shard(ds, 1), b)
    _inspect_fails(ds, "steps-00001.npy")


def test_no_steps(base, tmp_path):
    ds = copy(base, "ds", tmp_path)
    for p in ds.glob("steps-*.npy"):
        p.unlink()
    _inspect_fails(ds, "ds", "steps")


# ----------------------------------------------------------------------------- inspect: metadata


def _sql(ds: Path, *statements: str) -> None:
    con = sqlite3.connect(ds / "metadata.db")
    for s in statements:
        con.execute(s)
    con.commit()
    con.close()


def test_metadata_missing(base, tmp_path):
    ds = copy(base, "ds", tmp_path)
    (ds / "metadata.db").unlink()
    _inspect_fails(ds, "ds", "metadata.db")


def test_metadata_not_sqlite(base, tmp_path):
    ds = copy(base, "ds", tmp_path)
    (ds / "metadata.db").write_bytes(b"not sqlite at all\n" * 100)
    _inspect_fails(ds, "metadata.db")


def test_metadata_locked(base, tmp_path):
    ds = copy(base, "ds", tmp_path)
    holder = sqlite3.connect(ds / "metadata.db", timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # a writer mid-transaction: readers get "locked"
    try:
        _inspect_fails(ds, "metadata.db", "locked")
    finally:
        holder.rollback()
        holder.close()


# one SQL edit of metadata.db -> what the error line must name
METADATA_EDITS = {
    "without_runs": ("DROP TABLE runs", ("metadata.db", "runs")),
    "without_step_column": (
        "ALTER TABLE runs RENAME COLUMN steps TO length",
        ("metadata.db", "steps"),
    ),
    "without_score_column": (
        "ALTER TABLE runs RENAME COLUMN max_score TO points",
        ("metadata.db", "score"),
    ),
    "runs_unknown_to_steps": (
        "DELETE FROM runs WHERE id = (SELECT MAX(id) FROM runs)",
        ("run_id",),
    ),
    "step_counts_disagree": (
        "UPDATE runs SET steps = steps + 1 WHERE id = (SELECT MIN(id) FROM runs)",
        ("metadata.db", "steps"),
    ),
}


@pytest.mark.parametrize("case", list(METADATA_EDITS))
def test_metadata_edited(base, tmp_path, case):
    statement, names = METADATA_EDITS[case]
    ds = copy(base, "ds", tmp_path)
    _sql(ds, statement)
    _inspect_fails(ds, *names)


def test_exponent_outside_vocab(base, tmp_path):
    ds = copy(base, "ds", tmp_path)
    a = np.load(_shard(ds))
    a["tile_65536_mask"][5] = 1  # cell 0 of row 5 holds a 65536 tile now
    np.save(_shard(ds), a)
    _inspect_fails(ds, "metadata.db", "highest_tile", "65536")


# ----------------------------------------------------------------------------- extract: trunk


def _extract_fails(base, tmp_path, init: Path, *names: str) -> None:
    out = tmp_path / "cache"
    r = invoke(["extract", "--dataset", base["ds"], "--init", init, "--out", out,
                "--config", TINY])  # fmt: skip
    assert_one_line_error(r, *names)
    assert not (out / "complete.json").exists()


def _config_edit(fn):
    """An edit of the init dir: ``fn`` changes its config.json as a dict."""

    def edit(init: Path) -> None:
        cfg = json.loads((init / "config.json").read_text())
        fn(cfg)
        (init / "config.json").write_text(json.dumps(cfg))

    return edit


def _weights_edit(fn):
    """An edit of the init dir: ``fn`` changes its weights as a dict of numpy arrays."""

    def edit(init: Path) -> None:
        from safetensors.numpy import load_file, save_file

        p = init / "model.safetensors"
        w = load_file(p)
        fn(w)
        save_file(w, p)

    return edit


def _nan_weight(w: dict) -> None:
    w["final_ln.weight"] = w["final_ln.weight"].copy()
    w["final_ln.weight"][0] = np.nan


def _truncate(init: Path) -> None:
    p = init / "model.safetensors"
    p.write_bytes(p.read_bytes()[:-64])


# one edit of a copy of the trunk's init dir -> what the error line must name
TRUNK_EDITS = {
    "config_missing_field": (
        _config_edit(lambda c: c.pop("hidden_size")),
        ("config.json", "hidden_size"),
    ),
    "config_wrong_type": (
        _config_edit(lambda c: c.update(num_hidden_layers="two")),
        ("config.json", "num_hidden_layers"),
    ),
    "config_not_json": (
        lambda init: (init / "config.json").write_text("{hidden_size: 32"),
        ("config.json",),
    ),
    "weights_wrong_shape": (
        _weights_edit(lambda w: w.update({"tok_emb.weight": w["tok_emb.weight"][:, :-1].copy()})),
        ("model.safetensors", "tok_emb.weight"),
    ),
    "weights_missing_key": (
        _weights_edit(lambda w: w.pop("final_ln.weight")),
        ("model.safetensors", "final_ln.weight"),
    ),
    "weights_nan": (_weights_edit(_nan_weight), ("model.safetensors", "final_ln.weight")),
    "weights_truncated": (_truncate, ("model.safetensors",)),
}


@pytest.mark.parametrize("case", list(TRUNK_EDITS))
def test_trunk_edited(base, tmp_path, case):
    edit, names = TRUNK_EDITS[case]
    init = copy(base, "trunk", tmp_path)
    edit(init)
    _extract_fails(base, tmp_path, init, *names)


def test_unknown_trunk_name(base, tmp_path):
    r = invoke(["extract", "--dataset", base["ds"], "--trunk", "resnet", "--out",
                tmp_path / "c", "--config", TINY])  # fmt: skip
    assert_one_line_error(r, "--trunk", "resnet")


def test_extract_exponent_outside_trunk_vocab(base, tmp_path):
    # a legal 65536 tile (nibble 15 + mask bit) needs vocab 17; the tiny trunk has 16
    ds = copy(base, "ds", tmp_path)
    a = np.load(_shard(ds))
    a["board"][7] |= np.uint64(0xF) << np.uint64(60)
    a["tile_65536_mask"][7] = 1
    np.save(_shard(ds), a)
    _sql(ds, f"UPDATE runs SET highest_tile = 65536 WHERE id = {int(a['run_id'][7])}")
    r = invoke(["extract", "--dataset", ds, "--init", base["trunk"], "--out", tmp_path / "c",
                "--config", TINY])  # fmt: skip
    assert_one_line_error(r, "steps-00000.npy", "board", "vocab")


# ----------------------------------------------------------------------------- extract: cache


def test_cache_from_another_trunk(base, tmp_path):
    cache = copy(base, "cache", tmp_path)
    before = snapshot(cache)
    other = tmp_path / "trunk2"
    run_ok(["trunk", "init", "--out", other, "--preset", "tiny", "--seed", "1"])
    r = invoke(["extract", "--dataset", base["ds"], "--init", other, "--out", cache,
                "--config", TINY])  # fmt: skip
    assert_one_line_error(r, "cache", "weights_sha256")
    assert snapshot(cache) == before


def test_cache_from_other_inputs(base, tmp_path):
    cache = copy(base, "cache", tmp_path)
    ds = copy(base, "ds", tmp_path)
    _sql(ds, "UPDATE runs SET seed = seed + 1")
    before = snapshot(cache)
    r = invoke(["extract", "--dataset", ds, "--init", base["trunk"], "--out", cache,
                "--config", TINY])  # fmt: skip
    assert_one_line_error(r, "cache", "metadata")
    assert snapshot(cache) == before


def test_extract_out_not_writable(base, tmp_path):
    r = invoke(["extract", "--dataset", base["ds"], "--init", base["trunk"], "--out",
                not_writable(tmp_path), "--config", TINY])  # fmt: skip
    assert_one_line_error(r, "blocker")


def test_extract_full_disk_then_resume(base, tmp_path, monkeypatch):
    """ENOSPC on the 3rd unit's ledger record (its rename): one line, then a clean resume."""
    out = tmp_path / "cache"
    real, calls = os.replace, []

    def replace(src, dst, *a, **k):
        calls.append("unit-" in os.path.basename(dst))
        if sum(calls) == 3 and calls[-1]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    args = ["extract", "--dataset", base["ds"], "--init", base["trunk"], "--out", out,
            "--config", TINY]  # fmt: skip
    r = invoke(args)
    monkeypatch.undo()
    assert_one_line_error(r, "No space left")
    assert not (out / "complete.json").exists()
    r = invoke(args)
    assert r.exit_code == 0, r.output
    units, redone = map(
        int, re.search(r"(\d+) units, (\d+) embedded by this run", r.output).groups()
    )
    assert 0 < redone < units, r.output  # the units recorded before the full disk were kept
    ref, got = snapshot(base["cache"]), snapshot(out)
    for name in ("complete.json", "extract.lock"):
        ref.pop(name, None)
        got.pop(name, None)
    assert got == ref


# ----------------------------------------------------------------------------- fit


def _fit_fails(cache: Path, out: Path, *extra: str, names=()) -> str:
    args = ["fit", "--cache", cache, "--out", out, "--head", "ordinal", "--arch", "probe",
            "--config", TINY, *FIT_SETS, *extra]  # fmt: skip
    return assert_one_line_error(invoke(args), *names)


def test_fit_incomplete_cache(base, tmp_path):
    cache = copy(base, "cache", tmp_path)
    (cache / "complete.json").unlink()
    for p in sorted((cache / "ledger").glob("unit-*.json"))[-2:]:
        p.unlink()
    before = snapshot(cache)
    _fit_fails(cache, tmp_path / "run", names=("cache", "complete.json"))
    assert snapshot(cache) == before
    # still resumable: extract redoes the two units, then the cache is whole again
    run_ok(["extract", "--dataset", base["ds"], "--init", base["trunk"], "--out", cache,
        "--config", TINY])  # fmt: skip
    assert (cache / "complete.json").exists()


def test_fit_not_a_cache(tmp_path):
    (tmp_path / "empty").mkdir()
    _fit_fails(tmp_path / "empty", tmp_path / "run", names=("empty",))


def test_fit_empty_split(base, tmp_path):
    line = _fit_fails(base["cache"], tmp_path / "run", "--set", "fit.split.val_where=id < 0",
                      names=("fit.split",))  # fmt: skip
    assert "val" in line


def test_fit_threshold_no_state_reaches(base, tmp_path):
    _fit_fails(base["cache"], tmp_path / "run", "--set", "fit.target.thresholds=[256, 65536]",
               names=("fit.target.thresholds", "65536"))  # fmt: skip


def test_fit_unknown_head(base, tmp_path):
    r = invoke(["fit", "--cache", base["cache"], "--out", tmp_path / "r", "--head", "banana",
                "--config", TINY])  # fmt: skip
    assert_one_line_error(r, "--head", "banana")


def test_fit_unknown_split_column(base, tmp_path):
    _fit_fails(base["cache"], tmp_path / "run", "--set", "fit.split.test_where=colour = 1",
               names=("colour",))  # fmt: skip


def test_fit_out_not_writable(base, tmp_path):
    _fit_fails(base["cache"], not_writable(tmp_path), names=("blocker",))


def test_fit_same_dir_other_config(base, tmp_path):
    run = copy(base, "run", tmp_path)
    before = snapshot(run)
    _fit_fails(base["cache"], run, "--set", "fit.train.lr=0.1", names=("run", "fit.train.lr"))
    assert {k: v for k, v in snapshot(run).items() if k != "lock"} == {
        k: v for k, v in before.items() if k != "lock"
    }


# ----------------------------------------------------------------------------- eval, export


def _run_without_checkpoint(base, tmp_path) -> Path:
    run = copy(base, "run", tmp_path)
    for p in run.rglob("best.safetensors"):
        p.unlink()
    return run


def test_eval_run_without_checkpoint(base, tmp_path):
    run = _run_without_checkpoint(base, tmp_path)
    r = invoke(["eval", run, "--out", tmp_path / "rep", "--config", TINY])
    assert_one_line_error(r, "run", "best.safetensors")


def test_eval_not_a_run_dir(base, tmp_path):
    (tmp_path / "nothing").mkdir()
    r = invoke(["eval", tmp_path / "nothing", "--out", tmp_path / "rep", "--config", TINY])
    assert_one_line_error(r, "nothing")


def test_eval_checkpoint_nan(base, tmp_path):
    from safetensors.numpy import load_file, save_file

    run = copy(base, "run", tmp_path)
    p = next(run.rglob("best.safetensors"))
    w = {k: np.full_like(v, np.nan) for k, v in load_file(p).items()}
    save_file(w, p)
    r = invoke(["eval", run, "--out", tmp_path / "rep", "--config", TINY])
    assert_one_line_error(r, "best.safetensors")


def test_export_checkpoint_nan(base, tmp_path):
    from safetensors.numpy import load_file, save_file

    run = copy(base, "run", tmp_path)
    p = next(run.rglob("best.safetensors"))
    save_file({k: np.full_like(v, np.nan) for k, v in load_file(p).items()}, p)
    r = invoke(["export", run, "--init", base["trunk"], "--out", tmp_path / "t2"])
    assert_one_line_error(r, "best.safetensors")
    assert not (tmp_path / "t2").exists()


def test_fit_cache_attribute_wrong_type(base, tmp_path):
    cache = copy(base, "cache", tmp_path)
    meta = json.loads((cache / "zarr.json").read_text())
    meta["attributes"]["n"] = "many"
    (cache / "zarr.json").write_text(json.dumps(meta))
    _fit_fails(cache, tmp_path / "run", names=("cache", "n"))


def test_eval_out_not_writable(base, tmp_path):
    r = invoke(["eval", base["run"], "--out", not_writable(tmp_path), "--config", TINY])
    assert_one_line_error(r, "blocker")


def test_eval_rebuild_not_a_report(tmp_path):
    (tmp_path / "rep").mkdir()
    r = invoke(["eval", "--rebuild", tmp_path / "rep"])
    assert_one_line_error(r, "rep")


def test_export_run_without_checkpoint(base, tmp_path):
    run = _run_without_checkpoint(base, tmp_path)
    r = invoke(["export", run, "--init", base["trunk"], "--out", tmp_path / "t2"])
    assert_one_line_error(r, "best.safetensors")
    assert not (tmp_path / "t2").exists()


def test_export_init_without_config(base, tmp_path):
    init = copy(base, "trunk", tmp_path)
    (init / "config.json").unlink()
    r = invoke(["export", base["run"], "--init", init, "--out", tmp_path / "t2"])
    assert_one_line_error(r, "config.json")


def test_export_existing_out(base, tmp_path):
    out = copy(base, "trunk", tmp_path)
    before = snapshot(out)
    r = invoke(["export", base["run"], "--init", base["trunk"], "--out", out])
    assert_one_line_error(r, "trunk", "--overwrite")
    assert snapshot(out) == before
