"""A second `vh extract` / `vh fit` on the same output while the first runs, and after it died.

The first command is a real process. Once it holds its lock it is frozen with SIGSTOP, so it is
certainly still "running" when the second command (in-process, through the CLI) tries the same
output: that one must refuse with one line naming the lock, exit code 3, and touch nothing.
Then the first is killed with SIGKILL, leaving its lock file behind: the next command must
recover it safely and finish. Both commands use the one lock of vh.durable (an ``flock`` the
kernel drops with its process, plus a JSON record of the holder for the message; a record of a
dead pid is replaced with a message) and delete the lock file when they finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from click.testing import CliRunner
from conftest import FIT_SETS, ROOT, TINY, assert_one_line_error, run_ok, snapshot

from vh.cli import main


def _start(args: list, until) -> subprocess.Popen:
    """Start `python -m vh ARGS`, wait until ``until()`` holds, then freeze it (SIGSTOP)."""
    p = subprocess.Popen(
        [sys.executable, "-m", "vh", *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not until(p):
        assert p.poll() is None, "the first command ended before it held its lock"
        assert time.monotonic() < deadline, "the first command never took its lock"
        time.sleep(0.02)
    p.send_signal(signal.SIGSTOP)
    return p


def _kill(p: subprocess.Popen) -> None:
    assert p.poll() is None  # still there (frozen): its lock is live until now
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)


def _refused(args: list, *names: str) -> None:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 3, r.output
    assert_one_line_error(r, *names)


def test_second_extract_refused_then_stale_lock_recovered(tiny, tmp_path):
    out = tmp_path / "cache"
    args = ["extract", "--dataset", tiny["ds"], "--init", tiny["trunk"], "--out", out,
            "--config", TINY]  # fmt: skip
    lock = out / "extract.lock"

    def holds(p):  # the lock file is written whole (O_EXCL create, then the owner's json)
        return lock.is_file() and f'"pid": {p.pid}' in lock.read_text()

    first = _start(args, holds)
    before = snapshot(out)
    _refused(args, "extract.lock", "another extract", str(first.pid))
    assert snapshot(out) == before  # the refused command wrote nothing
    _kill(first)
    assert lock.is_file()  # left behind by the dead process
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output  # (its "removing a stale lock" line goes to the real stderr)
    assert (out / "complete.json").is_file() and not lock.exists()
    # the recovered cache is the cache an uninterrupted run writes
    want = {k: v for k, v in snapshot(tiny["cache"]).items() if k != "complete.json"}
    assert {k: v for k, v in snapshot(out).items() if k != "complete.json"} == want


def test_second_fit_refused_then_dead_holder_recovered(tiny, tmp_path):
    out = tmp_path / "run"
    args = ["fit", "--cache", tiny["cache"], "--out", out, "--head", "ordinal", "--arch",
            "probe", "--config", TINY, *FIT_SETS]  # fmt: skip
    lock = out / "lock"
    first = _start(args, lambda p: lock.is_file() and f'"pid": {p.pid}' in lock.read_text())
    _refused(args, "lock", "another vh fit", str(first.pid))
    _kill(first)
    run_ok(args)  # the flock died with its process
    assert not lock.exists()  # released: deleted by the finished fit
    want = (tiny["run"] / "members" / "m000" / "best.safetensors").read_bytes()
    assert (out / "members" / "m000" / "best.safetensors").read_bytes() == want
