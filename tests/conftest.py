"""Shared fixtures of the reliability tests: tiny good inputs, built once per session.

They are built through the CLI (click's CliRunner, in-process), as a user would: a 12-game
synth dataset, a tiny seeded trunk, a finished cache of the two and a fitted probe run dir.
Tests copy what they break; nothing here is ever modified.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")
# 12 tiny games reach 256 in every split; fixed predicates so val and test are never empty
FIT_SETS = [
    "--set", "fit.target.thresholds=[128, 256]",
    "--set", "fit.split.val_where=id % 4 = 1",
    "--set", "fit.split.test_where=id % 4 = 2",
]  # fmt: skip


def invoke(args: list):
    """Run one `vh` command in-process, exceptions caught: the result, to inspect."""
    from vh.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def snapshot(path) -> dict[str, bytes]:
    """Every regular file under ``path`` (or the file itself) with its bytes; a FIFO is never
    read (it would block)."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def assert_one_line_error(r, *names) -> str:
    """Non-zero exit, one ``error:`` line (the last) naming every one of ``names``, no
    traceback; the line."""
    assert r.exit_code not in (0, None), r.output
    # a bug surfaces as an exception click could not turn into an exit code
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    lines = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, r.output
    line = lines[0]
    assert line == r.output.strip().splitlines()[-1], r.output
    for n in names:
        assert str(n) in line, (n, line)
    if os.environ.get("VH_MATRIX_LOG"):  # the closing note's table: case -> what the user sees
        with open(os.environ["VH_MATRIX_LOG"], "a") as f:
            f.write(f"{os.environ['PYTEST_CURRENT_TEST'].split('::')[-1]}\t{line}\n")
    return line


def run_ok(args: list) -> str:
    """Run one `vh` command in-process; fail the test with its output unless it succeeds."""
    from vh.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Good inputs: ``ds`` (dataset dir), ``trunk`` (init dir), ``cache``, ``run`` (run dir)."""
    t = tmp_path_factory.mktemp("tiny")
    run_ok(["synth", "--out", t / "ds", "--config", TINY, "--games", "12"])
    run_ok(["trunk", "init", "--out", t / "trunk", "--preset", "tiny", "--seed", "0"])
    run_ok(["extract", "--dataset", t / "ds", "--init", t / "trunk", "--out", t / "cache",
            "--config", TINY])  # fmt: skip
    run_ok(["fit", "--cache", t / "cache", "--out", t / "run", "--head", "ordinal", "--arch",
            "probe", "--config", TINY, *FIT_SETS])  # fmt: skip
    return {"ds": t / "ds", "trunk": t / "trunk", "cache": t / "cache", "run": t / "run"}


# The small float32 study of the export tests (test_export.py, test_eval_skill.py): 24 greedy
# games, a float32 cache (exported heads are compared with the JAX head to 1e-5), a fit a probe
# learns something from in two epochs.
EXPORT_SETS = [
    "synth.games=24",
    "synth.player=greedy",
    "synth.shard_rows=4096",
    "extract.dtype=float32",
    "extract.chunk_rows=1024",
    "extract.batch_size=512",
    "fit.target.thresholds=[128, 256, 512]",
    "fit.train.batch_size=1024",
    "fit.train.epochs=2",
    "fit.train.lr=0.01",
    "fit.split.train=0.6",
    "fit.split.val=0.2",
    "fit.split.test=0.2",
]


def export_study(root: Path, *sets: str):
    """``root/data`` (synth), ``root/trunk`` (tiny, seed 3) and ``root/cache`` (float32) under
    :data:`EXPORT_SETS` plus ``sets``; returns the config."""
    from vh.config import load_config
    from vh.extract.run import run_extract
    from vh.extract.synth import synth
    from vh.extract.trunk import write_init_dir

    cfg = load_config(sets=[*EXPORT_SETS, *sets])
    synth(cfg.synth, root / "data", progress=False)
    write_init_dir(root / "trunk", "tiny", seed=3)
    run_extract(root / "data", root / "trunk", root / "cache", cfg, log=None)
    return cfg
