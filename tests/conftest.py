"""Shared fixtures of the reliability tests: tiny good inputs, built once per session.

They are built through the CLI (click's CliRunner, in-process), as a user would: a 12-game
synth dataset, a tiny seeded trunk, a finished cache of the two and a fitted probe run dir.
Tests copy what they break; nothing here is ever modified.
"""

from __future__ import annotations

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
