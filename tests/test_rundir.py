"""The run dir contract (vh.heads.rundir): every artifact round-trips, the format version is
checked, the batch actually used is recorded, a second `vh fit` resumes, and the one lock
(vh.durable.Lock) refuses, recovers and leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FIT_SETS, TINY, assert_one_line_error, snapshot

from vh import durable
from vh.cli import main
from vh.config import load_config
from vh.errors import VhError
from vh.heads import checkpoint as ck
from vh.heads import rundir

SETS = [s for s in FIT_SETS if s != "--set"]


def _fit_cfg(*extra: str):
    return load_config([TINY], [*SETS, *extra]).fit


# --------------------------------------------------------------------------- round trips


def test_every_artifact_round_trips(tmp_path):
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    run_ids = np.array([3, 5, 8, 13], np.int64)
    split = np.array([0, 1, 2, 0], np.int8)
    rows = {n: np.sort(rng.choice(100, 7, replace=False)) for n in rundir.SPLIT_NAMES}
    rundir.write_sampling(run, run_ids, split, rows, "split,rows\ntrain,7\n", seed=42)
    rundir.write_config(run, {"vh_version": "x", "fit": {"a": 1}, "grid": [{"name": "m000"}]})

    config = json.loads((run / "config.json").read_text())  # read independently of rundir
    assert config[rundir.VERSION_KEY] == rundir.VERSION == 1
    assert rundir.read_config(run) == config and config["fit"] == {"a": 1}
    got = rundir.read_split(run)
    assert np.array_equal(got["run_id"], run_ids) and np.array_equal(got["split"], split)
    assert int(got["seed"]) == 42
    sampling = rundir.read_sampling(run)
    for n in rundir.SPLIT_NAMES:
        assert np.array_equal(sampling[f"{n}_rows"], rows[n])
    assert rundir.read_manifest(run) == "split,rows\ntrain,7\n"

    params = {"out.kernel": rng.normal(size=(4, 3)).astype(np.float32), "out.bias": np.zeros(3)}
    rundir.write_best(run, "m000", params, {"member": "m000", "epoch": 2, "val_nll": 0.5})
    back = rundir.read_best(run, "m000")
    assert sorted(back) == sorted(params)
    assert all(np.array_equal(back[k], params[k]) for k in params)
    assert ck.load_tensors(rundir.best_path(run, "m000"))[1]["epoch"] == 2

    lines = [{"epoch": 0, "split": "train", "nll": 0.7}, {"epoch": 0, "split": "val", "nll": 0.6}]
    rundir.metrics_log(run, "m000").append(lines)
    assert rundir.read_curves(run) == {"m000": lines}

    member = {"best_epoch": 2, "best_val_nll": 0.5}
    summary = {"best_member": "m000", "members": {"m000": member}, "batch": {"used": 7}}
    rundir.write_summary(run, summary)
    assert rundir.read_summary(run) == summary
    assert json.loads((run / "members" / "m000" / "summary.json").read_text()) == member

    state = {"w": np.arange(6.0).reshape(2, 3), "step": np.array(4, np.int32)}
    ck.save_state(rundir.state_path(run), state, {"epoch": 3})
    restored, meta = ck.load_state(rundir.state_path(run), state)
    assert meta == {"epoch": 3} and np.array_equal(restored["w"], state["w"])

    # what a report copies and reads back (vh.eval.inputs reads the copies through rundir)
    from vh.eval.inputs import read_run_files

    rundir.copy_cited(run, tmp_path / "copy")
    assert sorted(snapshot(tmp_path / "copy")) == [
        "config.json",
        "members/m000/metrics.jsonl",
        "members/m000/summary.json",
        "sampling_manifest.csv",
        "summary.json",
    ]
    rf = read_run_files(tmp_path / "copy")
    assert (rf.config, rf.summary, rf.curves) == (config, summary, {"m000": lines})
    assert rf.manifest == "split,rows\ntrain,7\n"
    assert not [p for p in run.rglob("*") if durable.is_temp(p.name)]  # no temp left over


def test_missing_files_are_named(tmp_path):
    with pytest.raises(VhError, match="config.json") as e:
        rundir.read_config(tmp_path)
    assert str(e.value.path).endswith("config.json")
    with pytest.raises(VhError, match="sampling.npz"):
        rundir.read_sampling(tmp_path)
    with pytest.raises(VhError, match="no checkpoint"):
        rundir.read_best(tmp_path, "m000")


@pytest.mark.parametrize("version", [2, 99, "1", 0, None])
def test_unknown_version_refused_with_one_line(tiny, tmp_path, version):
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    config = json.loads((run / "config.json").read_text())
    config[rundir.VERSION_KEY] = version
    (run / "config.json").write_text(json.dumps(config))
    before = snapshot(run)
    r = CliRunner().invoke(main, ["eval", str(run), "--out", str(tmp_path / "rep")])
    line = assert_one_line_error(r)
    assert "config.json" in line and rundir.VERSION_KEY in line
    assert ("newer than this vh reads" if version in (2, 99) else "unknown run dir version") in line
    assert snapshot(run) == before and not (tmp_path / "rep").exists()


def test_run_dir_without_version_reads_as_version_1(tiny, tmp_path):
    from vh.heads.api import load_run

    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    config = json.loads((run / "config.json").read_text())
    config.pop(rundir.VERSION_KEY, None)  # as written before the field existed
    (run / "config.json").write_text(json.dumps(config))
    assert rundir.check_version(rundir.read_config(run), run / "config.json") == 1
    head = load_run(run)
    ref = load_run(tiny["run"])
    assert head.member == ref.member
    assert all(np.array_equal(head.params[k], ref.params[k]) for k in ref.params)


# --------------------------------------------------------------------------- fit writes it


def test_effective_batch_recorded_and_fit_twice_resumes(tiny, tmp_path):
    from vh.heads.api import fit

    run = tmp_path / "run"
    lines: list[str] = []
    cfg = _fit_cfg("fit.train.batch_size=1000000", "fit.train.microbatch=0", "fit.train.epochs=2")
    s1 = fit(cfg, tiny["cache"], run, log=lines.append)
    n_train = rundir.read_sampling(run)["train_rows"].size  # independent of the summary
    want = {"requested": 1_000_000, "used": n_train, "micro": n_train}
    assert rundir.read_summary(run)["batch"] == s1["batch"] == want
    assert f"batch {n_train:,} (of 1,000,000 asked)" in lines[0]
    assert not (run / rundir.LOCK).exists()  # the lock is released and its file gone
    bests = {p: p.read_bytes() for p in run.glob("members/*/best.safetensors")}

    lines.clear()
    s2 = fit(cfg, tiny["cache"], run, log=lines.append)  # the same fit again: resumes
    assert "resuming" in lines[0]
    assert not [x for x in lines if "fit: epoch" in x]  # every epoch was done: none retrained
    assert {p: p.read_bytes() for p in run.glob("members/*/best.safetensors")} == bests
    assert s2["best_member"] == s1["best_member"] and s2["batch"] == want

    small = _fit_cfg("fit.train.batch_size=64", "fit.train.microbatch=32", "fit.train.epochs=1")
    s3 = fit(small, tiny["cache"], tmp_path / "small", log=lambda s: None)
    assert s3["batch"] == {"requested": 64, "used": 64, "micro": 32}


def test_vh_fit_twice_on_the_cli_resumes(tiny, tmp_path):
    run = tmp_path / "run"
    args = ["fit", "--cache", str(tiny["cache"]), "--out", str(run), "--head", "ordinal",
            "--arch", "probe", "--config", TINY, *FIT_SETS]  # fmt: skip
    r1 = CliRunner().invoke(main, args)
    assert r1.exit_code == 0, r1.output
    first = snapshot(run)
    r2 = CliRunner().invoke(main, args)
    assert r2.exit_code == 0, r2.output
    assert "resuming" in r2.output
    again = snapshot(run)
    for name in ("config.json", "sampling.npz", "split.npz", "members/m000/best.safetensors"):
        assert again[name] == first[name], name


# --------------------------------------------------------------------------- the lock


def test_lock_refuses_recovers_and_leaves_nothing(tmp_path):
    folder = tmp_path / "new"
    with pytest.raises(RuntimeError), rundir.lock(folder):
        raise RuntimeError("refused after the lock")
    assert not folder.exists()  # created by the lock, holding nothing: removed

    with rundir.lock(folder) as held:
        rec = json.loads(held.path.read_text())
        assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname()
        before = snapshot(folder)
        with pytest.raises(
            VhError, match=f"another vh fit is using this run dir \\(pid {os.getpid()}"
        ) as e:
            rundir.lock(folder).acquire()
        assert e.value.code == 3 and snapshot(folder) == before  # the refusal touched nothing
    assert not (folder / rundir.LOCK).exists()

    # a record left by a dead process on this host is replaced, saying so
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (folder / rundir.LOCK).write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    log = tmp_path / "log.txt"
    with open(log, "w") as f, durable.Lock(folder, rundir.LOCK, "held by {holder}", log=f):
        pass
    assert f"stale lock of pid {dead}" in log.read_text()
    # one from another host is never broken, and stays
    other = json.dumps({"pid": int(dead), "host": "elsewhere", "started_unix": 0})
    (folder / rundir.LOCK).write_text(other)
    with pytest.raises(VhError, match="held by pid .* on elsewhere"):
        durable.Lock(folder, rundir.LOCK, "held by {holder}").acquire()
    assert (folder / rundir.LOCK).read_text() == other
