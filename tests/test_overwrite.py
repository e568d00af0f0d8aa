"""`--overwrite` deletes only what vh made (issue 10, item 4; vh.durable).

Every command that writes a folder (fit, export, extract, synth, eval) is pointed at folders
it must never delete or write over: an input of the command (the cache, the trunk's init
dir, the run dir, the dataset), a parent of them, ``.`` and ``..``, a folder vh made as
another kind, and a folder of the user's files. Each case must end in one ``error:`` line
naming the folder, a non-zero exit and no traceback, with every byte under the test's folder
unchanged and nothing new there (no lock, no half-made folder, no temp dir next to it).
Positive cases: a folder vh made (with its ownership marker, or a recognised pre-marker
layout) is overwritten. A crash test kills ``vh export`` between its two renames.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIT_SETS, ROOT, TINY, assert_one_line_error, invoke

from vh import durable
from vh.errors import VhError

# --------------------------------------------------------------------------- helpers


def tree(path: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``path``, hidden ones included."""
    return {
        str(p.relative_to(path)): None if p.is_dir() else p.read_bytes()
        for p in sorted(path.rglob("*"))
    }


def assert_refused(r, folder: str) -> str:
    """Non-zero exit, no traceback, one ``error:`` line (the last), naming ``folder`` first."""
    line = assert_one_line_error(r)
    assert line.startswith(f"error: {folder}:"), (folder, line)
    return line


@pytest.fixture
def world(tiny, tmp_path) -> Path:
    """Copies of the shared inputs in ``tmp_path/w`` (ds, trunk, cache, run) and ``user/``,
    a folder of the user's files; the run's recorded cache is the copy."""
    w = tmp_path / "w"
    for name in ("ds", "trunk", "cache", "run"):
        shutil.copytree(tiny[name], w / name)
    config = json.loads((w / "run" / "config.json").read_text())
    config["cache"]["path"] = str(w / "cache")
    (w / "run" / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (w / "user").mkdir()
    (w / "user" / "thesis.tex").write_text("years of work")
    (w / "user" / "photos").mkdir()
    (w / "user" / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return w


def fit_args(w: Path, out) -> list:
    return ["fit", "--cache", w / "cache", "--out", out, "--overwrite", "--head", "ordinal",
            "--arch", "probe", "--config", TINY, *FIT_SETS]  # fmt: skip


def export_args(w: Path, out) -> list:
    return ["export", w / "run", "--init", w / "trunk", "--out", out, "--overwrite"]


def extract_args(w: Path, out) -> list:
    return ["extract", "--dataset", w / "ds", "--init", w / "trunk", "--out", out,
            "--overwrite", "--config", TINY]  # fmt: skip


def synth_args(w: Path, out) -> list:
    return ["synth", "--out", out, "--overwrite", "--config", TINY, "--games", "2"]


def eval_args(w: Path, out) -> list:
    return ["eval", w / "run", "--out", out, "--config", TINY]


COMMANDS = {
    "fit": fit_args,
    "export": export_args,
    "extract": extract_args,
    "synth": synth_args,
    "eval": eval_args,
}
# target -> (--out as given, the folder it is given from, both relative to w); "parent" is w
# itself by its full path. "run" is fit's own kind, "cache" extract's and "ds" synth's: those
# are the positive cases below, not refusals.
TARGETS = {
    "cache": ("cache", "."),
    "trunk": ("trunk", "."),
    "run": ("run", "."),
    "ds": ("ds", "."),
    "parent": (None, "."),
    "dot": (".", "."),
    "dotdot": ("..", "user"),
    "user": ("user", "."),
}
OWN_KIND = {"fit": "run", "extract": "cache", "synth": "ds"}
CASES = [(cmd, target) for cmd in COMMANDS for target in TARGETS if OWN_KIND.get(cmd) != target]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("cmd", "target"), CASES, ids=[f"{c}-{t}" for c, t in CASES])
def test_refused_and_nothing_touched(world, tmp_path, monkeypatch, cmd, target):
    rel, cwd = TARGETS[target]
    monkeypatch.chdir(world / cwd)
    out = str(world) if rel is None else rel
    before = tree(tmp_path)
    r = invoke(COMMANDS[cmd](world, out))
    assert_refused(r, out)
    assert tree(tmp_path) == before  # same bytes, no lock, no new folder, no temp sibling


def test_fit_refuses_a_link_to_the_cache(world):
    link = world / "link"
    link.symlink_to(world / "cache", target_is_directory=True)
    before = tree(world)
    line = assert_refused(invoke(fit_args(world, link)), str(link))
    assert "--cache input itself" in line
    assert tree(world) == before


def test_export_refuses_its_own_init_dir_as_out(world):
    """An init dir vh exported is vh's to replace, but not while it is this export's input."""
    first = world / "exported"
    assert invoke(export_args(world, first)).exit_code == 0
    before = tree(world)
    args = ["export", world / "run", "--init", first, "--out", first, "--overwrite"]
    line = assert_refused(invoke(args), str(first))
    assert "--init input itself" in line
    assert tree(world) == before


def test_export_refuses_an_init_dir_with_a_foreign_file(world):
    r = invoke(export_args(world, world / "new"))
    assert r.exit_code == 0, r.output
    (world / "new" / "notes.txt").write_text("mine")
    before = tree(world)
    line = assert_refused(invoke(export_args(world, world / "new")), str(world / "new"))
    assert "notes.txt" in line
    assert tree(world) == before


def test_refused_fit_leaves_no_run_dir_behind(tiny, tmp_path):
    """A fit refused after it took the lock (no train run reaches 8192) leaves no folder, so
    the corrected command is not blocked by it."""
    out = tmp_path / "r"
    args = ["fit", "--cache", tiny["cache"], "--out", out, "--head", "ordinal", "--arch",
            "probe", "--config", TINY, *FIT_SETS]  # fmt: skip
    r = invoke([*args, "--set", "fit.target.thresholds=[128, 8192]"])
    assert r.exit_code != 0 and "8192" in r.output, r.output
    assert not out.exists()
    r = invoke(args)
    assert r.exit_code == 0, r.output
    assert durable.owner(out) == "run"


def test_resume_of_nothing_creates_nothing(tiny, tmp_path):
    out = tmp_path / "r"
    args = ["fit", "--cache", tiny["cache"], "--out", out, "--resume", "--config", TINY]
    line = assert_refused(invoke(args), str(out))
    assert "nothing to resume" in line
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- what vh made


def test_fit_overwrites_a_run_dir_it_made(world):
    run = world / "run"
    assert durable.owner(run) == "run"
    (run / "members" / "m000" / "stale.bin").write_bytes(b"x")  # inside fit's own folders
    r = invoke(fit_args(world, run))
    assert r.exit_code == 0, r.output
    assert not (run / "members" / "m000" / "stale.bin").exists()
    assert (run / "summary.json").is_file() and durable.owner(run) == "run"


def test_fit_pre_marker_run_dir(world):
    """A run dir of a vh before markers is accepted while it holds only fit's files."""
    run = world / "run"
    (run / durable.MARKER).unlink()
    (run / "notes.txt").write_text("mine")
    before = tree(world)
    line = assert_refused(invoke(fit_args(world, run)), str(run))
    assert "notes.txt" in line and tree(world) == before
    (run / "notes.txt").unlink()
    r = invoke(fit_args(world, run))
    assert r.exit_code == 0, r.output
    assert durable.owner(run) == "run"


def test_export_replaces_an_init_dir_it_made(world):
    out = world / "exported"
    assert invoke(export_args(world, out)).exit_code == 0
    assert durable.owner(out) == "init"
    first = tree(out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "note": "old"}))
    r = invoke(export_args(world, out))
    assert r.exit_code == 0, r.output
    assert tree(out) == first  # the new one, whole; the old one gone
    assert not [p for p in world.iterdir() if p.name.startswith(".exported.")]


def test_synth_overwrites_datasets_vh_made_only(world):
    ds = world / "ds"
    r = invoke(synth_args(world, ds))
    assert r.exit_code == 0, r.output
    assert durable.owner(ds) == "dataset"
    # a dataset of a vh before markers: its session names vh
    (ds / durable.MARKER).unlink()
    r = invoke(synth_args(world, ds))
    assert r.exit_code == 0, r.output
    # the same layout without vh's session row: someone else's dataset, never deleted
    (ds / durable.MARKER).unlink()
    con = sqlite3.connect(ds / "metadata.db")
    with con:
        con.execute("DELETE FROM session WHERE meta_key = 'vh_version'")
    con.close()
    before = tree(world)
    line = assert_refused(invoke(synth_args(world, ds)), str(ds))
    assert "not a vh dataset dir" in line
    assert tree(world) == before


def test_extract_overwrites_a_cache_it_made(world):
    cache = world / "cache"
    emb = tree(cache / "emb")
    r = invoke(extract_args(world, cache))
    assert r.exit_code == 0, r.output
    assert tree(cache / "emb") == emb  # recomputed from the same inputs: the same bytes
    assert durable.owner(cache) == "cache"


def test_clear_cache_dir_accepts_pre_marker_caches_only(world):
    from vh.cache.writer import clear_cache_dir

    cache = world / "cache"
    (cache / durable.MARKER).unlink()
    zarr_json = json.loads((cache / "zarr.json").read_text())
    del zarr_json["attributes"]["vh_version"]  # not vh's zarr group any more
    (cache / "zarr.json").write_text(json.dumps(zarr_json))
    before = tree(world)
    with pytest.raises(VhError, match="not a vh cache"):
        clear_cache_dir(cache)
    assert tree(world) == before
    zarr_json["attributes"]["vh_version"] = "0.1.0"
    (cache / "zarr.json").write_text(json.dumps(zarr_json))
    clear_cache_dir(cache)
    assert sorted(os.listdir(cache)) == [durable.MARKER]  # claimed before anything is removed


def test_eval_rewrites_a_report_dir_it_made(world):
    out = world / "report"
    r = invoke(eval_args(world, out))
    assert r.exit_code == 0, r.output
    assert durable.owner(out) == "report" and (out / "index.html").is_file()
    r = invoke(eval_args(world, out))
    assert r.exit_code == 0, r.output


def test_failed_eval_leaves_no_report_dir(world):
    (world / "run" / "summary.json").unlink()  # not a finished fit
    r = invoke(eval_args(world, world / "report"))
    assert r.exit_code != 0
    assert not (world / "report").exists()


# --------------------------------------------------------------------------- crash in export


def _export_killed(world: Path, out: Path, point: str) -> None:
    cmd = [sys.executable, "-m", "vh", *map(str, export_args(world, out))]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VH_FAILPOINT": f"{point}:1"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]  # SIGKILLed at the point


def _siblings(out: Path) -> list[Path]:
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.parametrize("point", ["replace:aside", "replace:done"])
def test_export_killed_while_replacing(world, point):
    """Killed between the renames (old aside, new not in place) or after them (old not yet
    deleted): the old dir is whole under its aside name, and a rerun ends with the new one."""
    out = world / "exported"
    assert invoke(export_args(world, out)).exit_code == 0
    new = tree(out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "note": "old"}))
    old = tree(out)
    _export_killed(world, out, point)
    aside = [p for p in _siblings(out) if ".old-" in p.name]
    assert len(aside) == 1 and tree(aside[0]) == old  # recoverable, byte for byte
    assert (not out.exists()) if point == "replace:aside" else tree(out) == new
    r = invoke(export_args(world, out))
    assert r.exit_code == 0, r.output
    assert tree(out) == new and _siblings(out) == []


def test_recover_dir_puts_the_old_folder_back(tmp_path):
    out = tmp_path / "x"
    (tmp_path / ".x.old-999999999").mkdir()  # a dead process set it aside
    (tmp_path / ".x.old-999999999" / "f").write_text("old")
    (tmp_path / ".x.tmp-999999999").mkdir()  # and was building this
    assert durable.recover_dir(out)
    assert (out / "f").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["x"]


# --------------------------------------------------------------------------- durable files


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    p = tmp_path / "a.json"
    durable.atomic_write_json(p, {"v": 1})

    def boom(path):
        Path(path).write_text('{"v": ')  # torn, then the disk fills
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        durable.atomic_write(p, boom)
    assert durable.read_json(p, "a.json") == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]  # the torn temp is gone


def test_read_json_refuses_special_and_bad_files(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(VhError, match="FIFO") as e:  # would block forever in open()
        durable.read_json(fifo, "config.json")
    assert "\n" not in e.value.line()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(VhError, match="not a JSON object"):
        durable.read_json(bad, "bad.json")
    bad.write_text("{nope")
    with pytest.raises(VhError, match="not valid JSON"):
        durable.read_json(bad, "bad.json")
    with pytest.raises(VhError, match="missing"):
        durable.read_json(tmp_path / "nope.json", "nope.json")


def test_check_not_input_resolves_paths(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    for out in (".", "..", str(tmp_path), "../b", "../../a"):
        with pytest.raises(VhError, match="--cache"):
            durable.check_not_input(out, {"--cache": "."})
    durable.check_not_input("sub", {"--cache": "."})  # inside an input: the user's choice
    durable.check_not_input("../c", {"--cache": "."})
