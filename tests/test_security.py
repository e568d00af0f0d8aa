"""Nothing a user is handed runs code (issue 10, item 1), and no trunk input can hang a read.

A trunk ``.pt`` bundle is a pickle: unpickling it fully runs whatever it names. Each test below
builds a real payload (a pickled call of ``open(marker, "w")``, which creates the marker file
when unpickled), puts it in an init dir with a valid config.json, and drives EVERY command
that takes a trunk: the command must refuse with one ``error:`` line naming the file, pointing
to safetensors and ``--trust-pickle``, leave no trace, and never create the marker. A control
test proves the payload is real: with ``--trust-pickle`` the marker does appear.

FIFOs named like trunk files are run in a subprocess with a timeout: a hang fails the test
instead of stopping the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_one_line_error, invoke, snapshot
from safetensors.torch import load_file

from vh.extract import trunk as T

ROOT = Path(__file__).resolve().parents[1]


class OpenPayload:
    """Unpickling this calls ``open(marker, "w")``: the marker file is the proof it ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tree(path: Path) -> set[str]:
    """Every path under ``path``: what a refused command must not add to."""
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def bundle_dir(tiny, where: Path, extra: object) -> Path:
    """An init dir: the tiny trunk's weights as a model.pt bundle with ``extra`` pickled in."""
    where.mkdir()
    shutil.copy(tiny["trunk"] / "config.json", where / "config.json")
    config = json.loads((where / "config.json").read_text())
    state = load_file(tiny["trunk"] / "model.safetensors")
    torch.save({"model": state, "encoder_config": config, "extra": extra}, where / "model.pt")
    return where


@pytest.fixture()
def hostile(tiny, tmp_path) -> dict:
    """A malicious init dir under ``tmp_path/work`` and the marker its payload would create."""
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "PWNED"
    init = bundle_dir(tiny, work / "init", OpenPayload(marker))
    return {"init": init, "pt": init / "model.pt", "marker": marker, "work": work}


def trunk_commands(tiny, init: Path, work: Path) -> dict[str, list]:
    """Every command that reads a trunk, writing (if at all) under ``work``."""
    return {
        "extract": ["extract", "--dataset", tiny["ds"], "--init", init, "--out",
                    work / "cache", "--config", TINY],
        "trunk show": ["trunk", "show", init],
        "export": ["export", tiny["run"], "--init", init, "--out", work / "exported"],
        "demo": ["demo", "--out", work / "demo", "--init", init],
    }  # fmt: skip


# --------------------------------------------------------------------------- refused by default


@pytest.mark.parametrize("command", ["extract", "trunk show", "export", "demo"])
@pytest.mark.parametrize("given", ["init dir", "pt file"])
def test_a_pickled_payload_never_runs(tiny, hostile, command, given):
    init = hostile["init"] if given == "init dir" else hostile["pt"]
    args = trunk_commands(tiny, init, hostile["work"])[command]
    before = {k: snapshot(tiny[k]) for k in ("ds", "run")}
    trunk_before, work_before = snapshot(hostile["init"]), tree(hostile["work"])

    r = invoke(args)

    line = assert_one_line_error(r, str(hostile["pt"]), "--trust-pickle", "safetensors")
    assert "code" in line  # says why it is refused
    assert not hostile["marker"].exists(), "the pickled payload ran"
    assert snapshot(hostile["init"]) == trunk_before
    assert {k: snapshot(tiny[k]) for k in ("ds", "run")} == before
    assert tree(hostile["work"]) == work_before  # no cache, export or demo folder left behind


def test_the_payload_is_real_it_runs_when_trusted(hostile):
    # the control: the same file with --trust-pickle does create the marker, so the tests
    # above would see it if any command unpickled it fully
    r = invoke(["trunk", "show", hostile["init"], "--trust-pickle"])
    assert r.exit_code == 0, r.output
    assert hostile["marker"].exists()


@pytest.mark.parametrize("command", ["extract", "trunk show", "export", "demo"])
def test_help_says_what_trust_pickle_does(tiny, tmp_path, command):
    args = trunk_commands(tiny, tmp_path, tmp_path)[command][: 2 if command == "trunk show" else 1]
    r = invoke([*args, "--help"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "--trust-pickle" in text and "EXECUTES code" in text and "you trust" in text


# --------------------------------------------------------------------------- opted in


@pytest.fixture()
def benign(tiny, tmp_path) -> Path:
    """A bundle that needs full unpickling but is harmless: a pathlib.Path in an extra key."""
    return bundle_dir(tiny, tmp_path / "benign", Path("/runs/0042"))


def test_trusted_benign_bundle_loads_in_trunk_show(tiny, benign):
    r = invoke(["trunk", "show", benign])
    assert_one_line_error(r, str(benign / "model.pt"), "--trust-pickle")
    r = invoke(["trunk", "show", benign, "--trust-pickle"])
    assert r.exit_code == 0, r.output
    sha = T.load_trunk(tiny["trunk"]).model.state_dict()
    lt = T.load_trunk(benign, trust_pickle=True)
    assert all(torch.equal(v, lt.model.state_dict()[k]) for k, v in sha.items())
    assert f"weights: {benign / 'model.pt'}" in r.output


def test_trusted_benign_bundle_extracts_the_same_embeddings(tiny, benign, tmp_path):
    from vh.cache.reader import open_cache

    out = tmp_path / "cache"
    r = invoke(["extract", "--dataset", tiny["ds"], "--init", benign, "--out", out,
                "--config", TINY, "--trust-pickle"])  # fmt: skip
    assert r.exit_code == 0, r.output
    got, want = open_cache(out), open_cache(tiny["cache"])
    # same weights, same rows: the same embeddings as the safetensors trunk's cache
    assert (got.n, got.d) == (want.n, want.d)
    assert (got.read_rows(0, got.n) == want.read_rows(0, want.n)).all()


def test_trusted_benign_bundle_reaches_the_export_check(tiny, benign, tmp_path):
    # --trust-pickle gets through to load_trunk: the refusal is now the export's own one
    # (the .pt file's sha256 is not that of the trunk the run was fitted on)
    r = invoke(["export", tiny["run"], "--init", benign, "--out", tmp_path / "x", "--trust-pickle"])
    line = assert_one_line_error(r, str(benign), "another trunk")
    assert "--trust-pickle" not in line and not (tmp_path / "x").exists()


def test_demo_passes_trust_pickle_to_its_extract(benign, tmp_path, monkeypatch):
    import vh.demo

    seen = {}
    monkeypatch.setattr(vh.demo, "run_demo", lambda out, cfg, **kw: seen.update(kw))
    r = invoke(["demo", "--out", tmp_path / "d", "--init", benign, "--trust-pickle"])
    assert r.exit_code == 0, r.output
    assert seen == {"init": str(benign), "trust_pickle": True, "play_games": 50}


# --------------------------------------------------------------------------- special files


def run_cli(args: list, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m vh ARGS` in a subprocess: a read that blocks forever fails on the timeout."""
    return subprocess.run(
        [sys.executable, "-m", "vh", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def assert_refused(p: subprocess.CompletedProcess, *names: str) -> str:
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, p.stderr
    for n in names:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "model.pt"])
def test_a_fifo_in_an_init_dir_is_refused_not_read(tiny, tmp_path, name):
    init = tmp_path / "init"
    shutil.copytree(tiny["trunk"], init)
    (init / name).unlink(missing_ok=True)
    if name == "model.pt":  # the .pt name is looked up after the safetensors names
        (init / "model.safetensors").unlink()
    os.mkfifo(init / name)
    before = tree(tmp_path)
    p = run_cli(["trunk", "show", init])
    assert_refused(p, str(init / name), "not a regular file")
    assert tree(tmp_path) == before


def test_a_fifo_weights_file_is_refused_by_extract(tiny, tmp_path):
    init = tmp_path / "init"
    shutil.copytree(tiny["trunk"], init)
    (init / "model.safetensors").unlink()
    os.mkfifo(init / "model.safetensors")
    p = run_cli(["extract", "--dataset", tiny["ds"], "--init", init, "--out", tmp_path / "c",
                 "--config", TINY])  # fmt: skip
    assert_refused(p, str(init / "model.safetensors"), "not a regular file")
    assert not (tmp_path / "c").exists()


def test_a_fifo_given_as_the_weights_file_is_refused(tiny, tmp_path):
    shutil.copy(tiny["trunk"] / "config.json", tmp_path / "config.json")
    os.mkfifo(tmp_path / "w.safetensors")
    p = run_cli(["trunk", "show", tmp_path / "w.safetensors"])
    assert_refused(p, str(tmp_path / "w.safetensors"), "not a regular file")


def test_a_dangling_link_named_like_weights_is_refused_not_skipped(tiny, tmp_path):
    # skipping it would fall through to a RANDOM trunk; it must be an error instead
    init = tmp_path / "init"
    init.mkdir()
    shutil.copy(tiny["trunk"] / "config.json", init / "config.json")
    (init / "model.safetensors").symlink_to(tmp_path / "gone.safetensors")
    r = invoke(["trunk", "show", init])
    assert_one_line_error(r, str(init / "model.safetensors"), "no such file")
